//! `make bench`, the edge part: the gateway against the proxies people use today, on loopback,
//! with wrk. A benchmark, not a test: it prints figures and checks only that every contestant
//! answers 200 to the tokens before it is measured.
//!
//! Contestants, all answering the same `GET /` with the same `Authorization` header:
//! - `direct`: nginx answering a small fixed body (the upstream of all the others);
//! - `nginx-proxy`: nginx proxying to it with upstream keep-alive, no authentication;
//! - `hyper-proxy` (pool workload only): the least a proxy on hyper does (`hyper-proxy.rs`),
//!   the floor under the gateway's proxy path;
//! - `haproxy-jwt`: HAProxy verifying the RS256 JWT (`jwt_verify`, algorithm fixed) and its
//!   `exp`, `iss` and `aud`, and looking its `jti` up in a map of revoked ids;
//! - `gateway`: this project's gateway, one worker thread, connected to its NATS feed;
//! - `gateway-1m`: the same with one million revocation rules replayed from its stream.
//!
//! wrk runs pinned to CPU 0, every server (NATS and the authz-server included) to CPU 1.
//! Rounds interleave the contestants, and each round starts with a different one. Two token
//! workloads: a pool of 1,000 valid tokens drawn at random, and never-seen tokens (each round
//! reads its own slice of a pre-signed file, so no server sees a token twice).
//!
//! Usage: edge-bench [--rounds N (5)] [--seconds S] [--connections C] [--rules N]
//!                   [--fresh-per-round N] [--only pool|fresh]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use authz_server::keys::{generate_pem, KeyObject};
use jsonwebtoken::Algorithm;
use system_tests::{free_ports, repo_root, Authz, Nats, Pki};

const ISSUER: &str = "https://bench.example";
const AUDIENCE: &str = "bench-api";
/// Lifetime of the benchmark's tokens; they are re-signed when less than half remains.
const TOKEN_TTL: u64 = 48 * 3600;
const POOL: usize = 1000;
/// CPUs: the load generator on the first, every server on the second.
const LOAD_CPU: &str = "0";
const SERVER_CPU: &str = "1";

/// Compares the gateway with nginx and HAProxy under wrk (BENCHMARKS.md).
#[derive(clap::Parser)]
#[command(name = "edge-bench")]
struct Args {
    /// Rounds per contestant and workload. Five: on a shared two-core machine one round in
    /// three can be off by 15%, and the median of five is steadier than the median of three.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Revocation rules in the `gateway-1m` contestant's stream (0: no such contestant).
    #[arg(long, default_value_t = 1_000_000)]
    rules: usize,
    /// Never-seen tokens signed for each round.
    #[arg(long, default_value_t = 250_000)]
    fresh_per_round: usize,
    /// Run one workload only.
    #[arg(long, value_parser = ["pool", "fresh"])]
    only: Option<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The benchmark's signing key and its tokens, kept under target/bench/tokens between runs
/// (signing a few hundred thousand RS256 tokens takes a minute).
struct Tokens {
    dir: PathBuf,
    pool: PathBuf,
    fresh: PathBuf,
    public_pem: PathBuf,
    jwks: PathBuf,
}

impl Tokens {
    fn ensure(dir: &Path, fresh_count: usize) -> Result<Tokens> {
        std::fs::create_dir_all(dir)?;
        let tokens = Tokens {
            dir: dir.to_path_buf(),
            pool: dir.join("pool.txt"),
            fresh: dir.join("fresh.txt"),
            public_pem: dir.join("public.pem"),
            jwks: dir.join("jwks.json"),
        };
        let meta = dir.join("meta.txt");
        let reusable = std::fs::read_to_string(&meta).ok().and_then(|m| {
            let mut parts = m.split_whitespace().map(|p| p.parse::<u64>().ok());
            Some((parts.next()??, parts.next()??))
        });
        if let Some((signed_at, count)) = reusable {
            if unix_now() < signed_at + TOKEN_TTL / 2 && count as usize >= fresh_count {
                eprintln!("reusing {count} never-seen tokens signed earlier");
                return Ok(tokens);
            }
        }
        // Until the new tokens are all written, nothing here is reusable.
        let _ = std::fs::remove_file(&meta);
        let key_pem = dir.join("signing-key.pem");
        let pem_text = generate_pem(Algorithm::RS256)?;
        std::fs::write(&key_pem, &pem_text)?;
        let key = KeyObject::from_pem(pem_text.as_bytes(), Algorithm::RS256)?;
        let der = {
            use base64::Engine as _;
            let body: String = pem_text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect();
            base64::engine::general_purpose::STANDARD.decode(body)?
        };
        std::fs::write(&tokens.jwks, serde_json::to_vec(&key.jwks())?)?;
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key_pem)
            .arg("-out")
            .arg(&tokens.public_pem))?;
        let now = unix_now();
        eprintln!("signing {POOL} pool tokens and {fresh_count} never-seen tokens (RS256)...");
        let started = Instant::now();
        write_tokens(&key, &der, &tokens.pool, "pool", POOL, now)?;
        write_tokens(&key, &der, &tokens.fresh, "fresh", fresh_count, now)?;
        eprintln!("signed in {:.1} s", started.elapsed().as_secs_f64());
        std::fs::write(&meta, format!("{now} {fresh_count}\n"))?;
        Ok(tokens)
    }

    /// Writes the `index`-th slice of `per_round` never-seen tokens to its own file.
    fn fresh_slice(&self, index: usize, per_round: usize) -> Result<PathBuf> {
        let text = std::fs::read_to_string(&self.fresh)?;
        let slice: Vec<&str> = text
            .lines()
            .skip(index * per_round)
            .take(per_round)
            .collect();
        anyhow::ensure!(slice.len() == per_round, "not enough never-seen tokens");
        let path = self.dir.join(format!("fresh-{index}.txt"));
        std::fs::write(&path, slice.join("\n") + "\n")?;
        Ok(path)
    }
}

/// Signs `count` distinct tokens on every CPU and writes one per line. The key is parsed
/// once: jsonwebtoken parses and checks it again for every signature, which is five times
/// slower than the signature itself.
fn write_tokens(
    key: &KeyObject,
    der: &[u8],
    path: &Path,
    tag: &str,
    count: usize,
    now: u64,
) -> Result<()> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
        .map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
    let header = B64.encode(serde_json::to_vec(&serde_json::json!({
        "alg": "RS256", "typ": "at+jwt", "kid": key.kid(),
    }))?);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks: Vec<Result<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (pair, header) = (&pair, &header);
                scope.spawn(move || -> Result<String> {
                    let rng = aws_lc_rs::rand::SystemRandom::new();
                    let mut signature = vec![0; pair.public_modulus_len()];
                    let mut out = String::new();
                    for i in (t..count).step_by(threads) {
                        let claims = serde_json::json!({
                            "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{i}"),
                            "client_id": "bench-client", "scope": "read",
                            "iat": now, "nbf": now, "exp": now + TOKEN_TTL,
                            "jti": format!("{tag}-{now}-{i}"),
                        });
                        let input =
                            format!("{header}.{}", B64.encode(serde_json::to_vec(&claims)?));
                        pair.sign(
                            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                            &rng,
                            input.as_bytes(),
                            &mut signature,
                        )
                        .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
                        out.push_str(&input);
                        out.push('.');
                        out.push_str(&B64.encode(&signature));
                        out.push('\n');
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("signer panicked")))
            })
            .collect()
    });
    let mut all = String::new();
    for chunk in chunks {
        all.push_str(&chunk?);
    }
    std::fs::write(path, all)?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A server process pinned to the server CPU, killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Server {
    /// [`Server::spawn`], under the command in `EDGE_BENCH_GATEWAY_WRAPPER` (for `gateway`) or
    /// `EDGE_BENCH_HYPER_PROXY_WRAPPER` (for `hyper-proxy`) if set: a profiler, e.g.
    /// "valgrind --tool=callgrind --callgrind-out-file=/tmp/gateway.callgrind".
    fn spawn_wrapped(
        name: &'static str,
        port: u16,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<Server> {
        let variable = format!(
            "EDGE_BENCH_{}_WRAPPER",
            name.to_ascii_uppercase().replace('-', "_")
        );
        let wrapper = std::env::var(variable).unwrap_or_default();
        let mut words: Vec<&str> = wrapper.split_whitespace().collect();
        let Some(first) = words.first().copied() else {
            return Server::spawn(name, port, program, args, log);
        };
        let program_text = program.display().to_string();
        words.remove(0);
        words.push(&program_text);
        words.extend_from_slice(args);
        Server::spawn(name, port, Path::new(first), &words, log)
    }

    fn spawn(
        name: &'static str,
        port: u16,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<Server> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log)?;
        let child = Command::new("taskset")
            .args(["-c", SERVER_CPU])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "warn")
            // A group of its own, so that stopping it also stops what a profiler wrapper forked.
            .process_group(0)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        running(format!("-{}", child.id()), true);
        Ok(Server { name, child, port })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    /// SIGTERM to its process group first (a profiler writes its output at exit), then, once
    /// it has exited or after 10 s, SIGKILL to whatever is left of the group (a server that a
    /// wrapper such as `strace` forked outlives the wrapper otherwise).
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.wait();
        running(group, false);
    }
}

/// `VmRSS` and `VmHWM` of a process, in MiB (zero if it cannot be read).
fn memory_mib(pid: u32) -> (f64, f64) {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    bench::measure::resident_memory(pid).map_or((0.0, 0.0), |(rss, peak)| (mib(rss), mib(peak)))
}

/// Pins every thread of a process started by the harness to the server CPU.
fn pin(pid: Option<u32>) -> Result<()> {
    let pid = pid.context("process not running")?;
    running(format!("{pid}"), true);
    run(Command::new("taskset").args(["-a", "-p", "-c", SERVER_CPU, &pid.to_string()]))?;
    Ok(())
}

/// What `kill` must be given to stop each process the benchmark started: a pid, or `-pgid`
/// for a server in a group of its own. Their drops stop them on a normal exit; this list is
/// for an interrupted one, when drops do not run.
static RUNNING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Adds (`true`) or removes a `kill` target of [`RUNNING`].
fn running(target: String, started: bool) {
    let mut list = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|t| *t != target);
    if started {
        list.push(target);
    }
}

/// On SIGINT or SIGTERM, stops every process the benchmark started and exits: a server in a
/// group of its own would not get a terminal's Ctrl-C, and none gets a `kill` of the
/// benchmark alone.
fn stop_everything_on_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("interrupted: stopping the servers");
        for target in RUNNING.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = Command::new("kill").args(["-TERM", "--", target]).status();
        }
        std::process::exit(130);
    });
    Ok(())
}

fn which(program: &str) -> Result<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("{program} is not installed (make bench installs wrk, nginx and haproxy with apt-get)")
}

/// The wrk script: every request carries a token from the file given as its argument, drawn
/// at random (`random`) or in file order (`sequential`); `done` prints one parsable line.
const WRK_SCRIPT: &str = r#"
local requests, n, i, mode = {}, 0, 0, "random"
function init(args)
  -- Every request is formatted here, once, so that wrk spends no time on it while measuring.
  for line in io.lines(args[1]) do
    n = n + 1
    requests[n] = wrk.format("GET", "/", {["Authorization"] = "Bearer " .. line})
  end
  mode = args[2]
  math.randomseed(os.time())
end
function request()
  if mode == "random" then
    return requests[math.random(n)]
  end
  i = i + 1
  if i > n then i = 1 end
  return requests[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"#;

/// One wrk run against one contestant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU microseconds per request of the contestant's own process.
    cpu_us: f64,
    /// Of the upstream nginx behind it (zero for `direct`).
    upstream_cpu_us: f64,
    requests: u64,
    errors: u64,
}

struct Load {
    wrk: PathBuf,
    script: PathBuf,
    seconds: u64,
    connections: u32,
    upstream_pid: u32,
}

impl Load {
    fn measure(&self, server: &Server, tokens: &Path, mode: &str) -> Result<Sample> {
        let (cpu0, up0) = (
            bench::measure::cpu_seconds(server.pid()),
            bench::measure::cpu_seconds(self.upstream_pid),
        );
        let out = run(Command::new("taskset")
            .args(["-c", LOAD_CPU])
            .arg(&self.wrk)
            .args(["-t1", &format!("-c{}", self.connections)])
            .arg(format!("-d{}s", self.seconds))
            .arg("-s")
            .arg(&self.script)
            .arg(format!("http://127.0.0.1:{}/", server.port))
            .arg("--")
            .arg(tokens)
            .arg(mode))?;
        let (cpu1, up1) = (
            bench::measure::cpu_seconds(server.pid()),
            bench::measure::cpu_seconds(self.upstream_pid),
        );
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("BENCH "))
            .with_context(|| format!("no result from wrk: {out}"))?;
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|f| f.parse::<f64>().unwrap_or(0.0))
            .collect();
        anyhow::ensure!(v.len() == 6, "bad wrk result line {line}");
        let requests = v[0].max(1.0);
        let upstream_cpu = if server.pid() == self.upstream_pid {
            0.0
        } else {
            up1 - up0
        };
        Ok(Sample {
            rps: v[0] / (v[1] / 1e6),
            p50_us: v[2],
            p99_us: v[3],
            cpu_us: (cpu1 - cpu0) * 1e6 / requests,
            upstream_cpu_us: upstream_cpu * 1e6 / requests,
            requests: v[0] as u64,
            errors: (v[4] + v[5]) as u64,
        })
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// What one contestant did over all rounds of a workload.
#[derive(Default)]
struct Summary {
    samples: Vec<Sample>,
}

impl Summary {
    fn rps(&self) -> f64 {
        median(self.samples.iter().map(|s| s.rps).collect())
    }
    fn p50(&self) -> f64 {
        median(self.samples.iter().map(|s| s.p50_us).collect())
    }
    fn p99(&self) -> f64 {
        median(self.samples.iter().map(|s| s.p99_us).collect())
    }
    fn cpu(&self) -> f64 {
        median(self.samples.iter().map(|s| s.cpu_us).collect())
    }
    fn upstream_cpu(&self) -> f64 {
        median(self.samples.iter().map(|s| s.upstream_cpu_us).collect())
    }
    fn errors(&self) -> u64 {
        self.samples.iter().map(|s| s.errors).sum()
    }
    fn range(&self) -> String {
        let min = self.samples.iter().map(|s| s.rps).fold(f64::MAX, f64::min);
        let max = self.samples.iter().map(|s| s.rps).fold(0.0, f64::max);
        format!("{min:.0}–{max:.0}")
    }
}

fn table(title: &str, results: &BTreeMap<&'static str, Summary>, order: &[&'static str]) -> String {
    let mut out = format!(
        "\n### {title}\n\n| contestant | requests/s (median) | range over rounds | p50 ms | p99 ms | CPU µs/req | upstream CPU µs/req | non-2xx or socket errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for name in order {
        if let Some(s) = results.get(name) {
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {} | {:.3} | {:.3} | {:.1} | {:.1} | {} |",
                s.rps(),
                s.range(),
                s.p50() / 1000.0,
                s.p99() / 1000.0,
                s.cpu(),
                s.upstream_cpu(),
                s.errors()
            );
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    stop_everything_on_signal()?;
    let (wrk, nginx, haproxy) = (which("wrk")?, which("nginx")?, which("haproxy")?);
    which("taskset")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cpus >= 2, "the benchmark pins the load and the servers to two different CPUs; this machine has {cpus}");
    let bench = repo_root().join("target/bench");
    let work = bench.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // Kept when the run fails: the servers' logs are there.
    eprintln!("work directory: {}", work.display());
    let fresh_needed = if args.only.as_deref() == Some("pool") {
        0
    } else {
        args.rounds * args.fresh_per_round
    };
    let tokens = Tokens::ensure(&bench.join("tokens"), fresh_needed)?;
    let script = work.join("tokens.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    // The revocation stack of `gateway`: NATS and the authz-server (for its heartbeats).
    let ports = free_ports(11)?;
    let nats = Nats::start()?;
    let authz_dir = work.join("authz");
    std::fs::create_dir_all(&authz_dir)?;
    // The stream keeps events as long as the gateway accepts tokens.
    let retention = format!("max_ttl = {TOKEN_TTL}");
    let authz = Authz::spawn_process(&authz_dir, ports[0], &[nats.url()], &retention).await?;
    pin(nats.pid())?;
    pin(authz.pid())?;

    // The upstream, and the plain proxy in front of it.
    let upstream_port = ports[1];
    let temp = work.join("nginx-temp");
    std::fs::create_dir_all(&temp)?;
    let nginx_common = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {log} warn;\npid {pid};\nevents {{ worker_connections 4096; }}\n",
        log = work.join("nginx-error.log").display(),
        pid = work.join("nginx-PORT.pid").display(),
    );
    let temp_paths = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {};\n", temp.join(t).display()))
        .collect::<String>();
    // One nginx: its configuration file and log are named after it.
    let spawn_nginx = |name: &'static str, file: &str, port: u16, http: String| -> Result<Server> {
        let conf = work.join(format!("{file}.conf"));
        std::fs::write(
            &conf,
            format!(
                "{common}http {{\n  access_log off;\n{temp_paths}  keepalive_requests 10000000;\n{http}}}\n",
                common = nginx_common.replace("PORT", &port.to_string()),
            ),
        )?;
        Server::spawn(
            name,
            port,
            &nginx,
            &[
                "-p",
                &work.display().to_string(),
                "-c",
                &conf.display().to_string(),
            ],
            &work.join(format!("{file}.log")),
        )
    };
    let direct = spawn_nginx(
        "direct",
        "upstream",
        upstream_port,
        format!("  server {{\n    listen 127.0.0.1:{upstream_port};\n    location / {{ default_type text/plain; return 200 \"hello from the upstream\\n\"; }}\n  }}\n"),
    )?;
    let proxy_port = ports[2];
    let nginx_proxy = spawn_nginx(
        "nginx-proxy",
        "nginx-proxy",
        proxy_port,
        format!("  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 128; keepalive_requests 10000000; }}\n  server {{\n    listen 127.0.0.1:{proxy_port};\n    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n"),
    )?;

    // The floor under the gateway: hyper's server and client and nothing else.
    let hyper_proxy = Server::spawn_wrapped(
        "hyper-proxy",
        ports[9],
        &system_tests::binary("hyper-proxy")?,
        &[
            "--listen",
            &format!("127.0.0.1:{}", ports[9]),
            "--upstream",
            &format!("127.0.0.1:{upstream_port}"),
        ],
        &work.join("hyper-proxy.log"),
    )?;

    // HAProxy verifying the JWT, with a map of revoked jtis.
    let haproxy_port = ports[3];
    let revoked_map = work.join("revoked.map");
    let revoked: String = (0..1000).map(|i| format!("revoked-{i} 1\n")).collect();
    std::fs::write(&revoked_map, revoked)?;
    let haproxy_conf = work.join("haproxy.cfg");
    std::fs::write(
        &haproxy_conf,
        format!(
            r#"global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend jwt
  bind 127.0.0.1:{haproxy_port}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_header_query('$.alg') -m str RS256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify("RS256","{public}") -m int 1 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER} }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {AUDIENCE} }}
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
  http-request deny deny_status 401 if {{ var(txn.bearer),jwt_payload_query('$.jti'),map({map}) -m found }}
  default_backend upstream
backend upstream
  server up 127.0.0.1:{upstream_port}
"#,
            public = tokens.public_pem.display(),
            map = revoked_map.display(),
        ),
    )?;
    let haproxy_jwt = Server::spawn(
        "haproxy-jwt",
        haproxy_port,
        &haproxy,
        &["-db", "-f", &haproxy_conf.display().to_string()],
        &work.join("haproxy.log"),
    )?;

    // The gateway.
    let gateway_bin = system_tests::binary("gateway")?;
    let gateway_conf = |port: u16, admin: u16, nats_url: &str, id: &str| {
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = {jwks:?}\nalgorithms = [\"RS256\"]\nmax_ttl = {ttl}\nworker_threads = 1\ndrain_delay_ms = 0\nshutdown_grace = 1\n\n[limits]\nmax_concurrent_requests = 4096\n\n[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:{upstream_port}\"\n\n{nats}",
            jwks = tokens.jwks,
            ttl = TOKEN_TTL,
            nats = Pki::get().nats_section(&[nats_url.to_string()], id, id),
        )
    };
    let gw_conf = work.join("gateway.toml");
    std::fs::write(
        &gw_conf,
        gateway_conf(ports[4], ports[5], &nats.url(), "gateway-1"),
    )?;
    let gateway = Server::spawn_wrapped(
        "gateway",
        ports[4],
        &gateway_bin,
        &["--config", &gw_conf.display().to_string()],
        &work.join("gateway.log"),
    )?;
    wait_ready(ports[5], Duration::from_secs(120)).await?;

    // The gateway with a million revocation rules, on a stack of its own.
    let mut stack_1m = None;
    let mut gateway_1m = None;
    let mut replay_report = String::new();
    if args.rules > 0 {
        let nats_1m = Nats::start()?;
        let dir = work.join("authz-1m");
        std::fs::create_dir_all(&dir)?;
        // Snapshots checked every second, so that the one of the million rules is taken before
        // the gateway starts (and loads it) rather than during a round, on the servers' CPU.
        let authz_1m = Authz::spawn_process(
            &dir,
            ports[6],
            &[nats_1m.url()],
            &format!("snapshot_interval_ms = 1000\n{retention}"),
        )
        .await?;
        pin(nats_1m.pid())?;
        pin(authz_1m.pid())?;
        eprintln!("seeding {} revocation rules...", args.rules);
        let started = Instant::now();
        let seeded_events =
            system_tests::seed::seed_revocations_for(&nats_1m.url(), &authz_1m, ISSUER, args.rules)
                .await?;
        let seeded = started.elapsed();
        system_tests::eventually(
            Duration::from_secs(120),
            "a snapshot of every rule",
            || async {
                (authz_1m.metric("authz_snapshot_sequence").await
                    >= seeded_events.last_sequence as f64)
                    .then_some(())
            },
        )
        .await?;
        let conf = work.join("gateway-1m.toml");
        std::fs::write(
            &conf,
            gateway_conf(ports[7], ports[8], &nats_1m.url(), "gateway-2"),
        )?;
        let started = Instant::now();
        let gw = Server::spawn(
            "gateway-1m",
            ports[7],
            &gateway_bin,
            &["--config", &conf.display().to_string()],
            &work.join("gateway-1m.log"),
        )?;
        wait_ready(ports[8], Duration::from_secs(120)).await?;
        let ready = started.elapsed();
        let (rss, peak) = memory_mib(gw.pid());
        let rules = metric(ports[8], "gateway_revocation_rules")
            .await
            .unwrap_or(-1.0);
        replay_report = format!(
            "\n### One million revocation rules\n\n| figure | value |\n|---|---:|\n| rules seeded into the stream | {} (in {:.1} s) |\n| rules held by the new gateway | {rules:.0} |\n| new gateway: start to ready (snapshot loaded, then the stream after it) | {:.2} s |\n| resident memory after ready (VmRSS) | {rss:.1} MiB |\n| peak resident memory (VmHWM) | {peak:.1} MiB |\n",
            args.rules,
            seeded.as_secs_f64(),
            ready.as_secs_f64(),
        );
        eprintln!("{replay_report}");
        gateway_1m = Some(gw);
        stack_1m = Some((nats_1m, authz_1m));
    }

    let (empty_rss, empty_peak) = memory_mib(gateway.pid());
    let load = Load {
        wrk,
        script,
        seconds: args.seconds,
        connections: args.connections,
        upstream_pid: direct.pid(),
    };

    // Every contestant must accept the tokens before it is measured.
    let mut pool_contestants: Vec<&Server> =
        vec![&direct, &nginx_proxy, &hyper_proxy, &haproxy_jwt, &gateway];
    if let Some(gw) = &gateway_1m {
        pool_contestants.push(gw);
    }
    let sample_token = std::fs::read_to_string(&tokens.pool)?
        .lines()
        .next()
        .context("empty token pool")?
        .to_string();
    for server in &pool_contestants {
        let status = call(server.port, &sample_token).await?;
        anyhow::ensure!(
            status == 200,
            "{} answered {status} to a valid token",
            server.name
        );
        let status = call(server.port, "not-a-token").await?;
        if !["direct", "nginx-proxy", "hyper-proxy"].contains(&server.name) {
            anyhow::ensure!(
                status == 401,
                "{} answered {status} to a bad token",
                server.name
            );
        }
    }

    let mut report = format!(
        "\n## Edge benchmark\n\n{} rounds of {} s per contestant and workload, wrk -t1 -c{} pinned to CPU {LOAD_CPU}, servers pinned to CPU {SERVER_CPU}. Figures are medians over the rounds.\n",
        args.rounds, args.seconds, args.connections
    );
    let order_pool: Vec<&'static str> = pool_contestants.iter().map(|s| s.name).collect();
    let mut pool = BTreeMap::new();
    if args.only.as_deref() != Some("fresh") {
        for round in 0..args.rounds {
            for k in 0..pool_contestants.len() {
                let server = pool_contestants[(round + k) % pool_contestants.len()];
                let s = load.measure(server, &tokens.pool, "random")?;
                eprintln!(
                    "pool  round {} {:<12} {:>8.0} req/s p99 {:.2} ms cpu {:.1} µs/req",
                    round + 1,
                    server.name,
                    s.rps,
                    s.p99_us / 1000.0,
                    s.cpu_us
                );
                pool.entry(server.name)
                    .or_insert_with(Summary::default)
                    .samples
                    .push(s);
            }
        }
        report.push_str(&table("Pool of 1,000 tokens", &pool, &order_pool));
        let cpu = |name: &str| pool.get(name).map_or(0.0, Summary::cpu);
        let _ = writeln!(
            report,
            "\nThe floor of hyper: `hyper-proxy` runs at {:.2}× `nginx-proxy`'s requests/s with {:.1} against {:.1} µs of CPU a request; the gateway adds {:.1} µs to it ({:.2}× its requests/s).",
            pool.get("hyper-proxy").map_or(0.0, Summary::rps)
                / pool.get("nginx-proxy").map_or(f64::NAN, Summary::rps),
            cpu("hyper-proxy"),
            cpu("nginx-proxy"),
            cpu("gateway") - cpu("hyper-proxy"),
            pool.get("gateway").map_or(0.0, Summary::rps)
                / pool.get("hyper-proxy").map_or(f64::NAN, Summary::rps),
        );
    }

    let fresh_contestants = [&haproxy_jwt, &gateway];
    let mut fresh = BTreeMap::new();
    let mut repeats = 0u64;
    if args.only.as_deref() != Some("pool") {
        for round in 0..args.rounds {
            let slice = tokens.fresh_slice(round, args.fresh_per_round)?;
            for k in 0..fresh_contestants.len() {
                let server = fresh_contestants[(round + k) % fresh_contestants.len()];
                let s = load.measure(server, &slice, "sequential")?;
                repeats += s.requests.saturating_sub(args.fresh_per_round as u64);
                eprintln!(
                    "fresh round {} {:<12} {:>8.0} req/s p99 {:.2} ms cpu {:.1} µs/req",
                    round + 1,
                    server.name,
                    s.rps,
                    s.p99_us / 1000.0,
                    s.cpu_us
                );
                fresh
                    .entry(server.name)
                    .or_insert_with(Summary::default)
                    .samples
                    .push(s);
            }
            let _ = std::fs::remove_file(slice);
        }
        report.push_str(&table(
            "Never-seen tokens (every request a token the server has not seen)",
            &fresh,
            &["haproxy-jwt", "gateway"],
        ));
        if repeats > 0 {
            let _ = writeln!(
                report,
                "\nWARNING: {repeats} requests reused a token (raise --fresh-per-round)."
            );
        }
    }

    // Targets.
    let mut targets =
        String::from("\n### Targets\n\n| target | measured | met |\n|---|---:|:---:|\n");
    let mut target = |name: &str, measured: String, met: bool| {
        let _ = writeln!(
            targets,
            "| {name} | {measured} | {} |",
            if met { "yes" } else { "**no**" }
        );
    };
    let rps = |m: &BTreeMap<&str, Summary>, k: &str| m.get(k).map_or(0.0, Summary::rps);
    if !pool.is_empty() {
        let (gw, ng, ha) = (
            rps(&pool, "gateway"),
            rps(&pool, "nginx-proxy"),
            rps(&pool, "haproxy-jwt"),
        );
        target(
            "pool: gateway ≥ 1.0× nginx-proxy requests/s",
            format!("{:.2}×", gw / ng),
            gw >= ng,
        );
        target(
            "pool: gateway ≥ 2.2× haproxy-jwt requests/s",
            format!("{:.2}×", gw / ha),
            gw >= 2.2 * ha,
        );
        let (gp, np) = (pool["gateway"].p99(), pool["nginx-proxy"].p99());
        target(
            "pool: gateway p99 ≤ nginx-proxy p99",
            format!("{:.3} ms vs {:.3} ms", gp / 1000.0, np / 1000.0),
            gp <= np,
        );
        if pool.contains_key("gateway-1m") {
            let g1 = rps(&pool, "gateway-1m");
            target(
                "1M rules: requests/s within 5% of the empty set",
                format!("{:+.1}%", (g1 / gw - 1.0) * 100.0),
                g1 >= 0.95 * gw,
            );
        }
    }
    if !fresh.is_empty() {
        let (gw, ha) = (rps(&fresh, "gateway"), rps(&fresh, "haproxy-jwt"));
        target(
            "never-seen: gateway ≥ 1.2× haproxy-jwt requests/s",
            format!("{:.2}×", gw / ha),
            gw >= 1.2 * ha,
        );
    }
    report.push_str(&replay_report);
    let _ = writeln!(
        report,
        "\nGateway on an empty set: VmRSS {empty_rss:.1} MiB, VmHWM {empty_peak:.1} MiB at start."
    );
    report.push_str(&targets);
    println!("{report}");
    drop(gateway_1m);
    drop(stack_1m);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Waits (bounded) for a gateway's `/readyz` to answer 200.
async fn wait_ready(admin_port: u16, limit: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    system_tests::eventually(limit, "the gateway to be ready", || {
        let request = http.get(&url).send();
        async move { request.await.ok().filter(|r| r.status() == 200) }
    })
    .await?;
    Ok(())
}

async fn metric(admin_port: u16, series: &str) -> Option<f64> {
    let text = system_tests::get_text(&format!("http://127.0.0.1:{admin_port}/metrics")).await?;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn call(port: u16, token: &str) -> Result<u16> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .bearer_auth(token)
        .send()
        .await?;
    Ok(response.status().as_u16())
}
