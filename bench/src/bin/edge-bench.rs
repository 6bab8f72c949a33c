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
//! - `gateway-1m`: the same with one million revocation rules replayed from its stream;
//! - `gateway-2iss` (pool workload only): `gateway` with a second issuer configured, listed
//!   first, so that every token first misses that issuer's token cache (`[[issuers]]`).
//! - `gateway-trace0`, `gateway-trace1` (pool workload only): `gateway` with `[tracing]` at
//!   sampling ratio 0 and 1, exporting to a collector that answers without decoding
//!   (`system-tests/interop/otlp_receiver.py --discard`, on the server CPU too). `gateway`
//!   itself is tracing compiled in and off.
//!
//! wrk runs pinned to CPU 0, every server (NATS and the authz-server included) to CPU 1.
//! `EDGE_BENCH_<NAME>_WRAPPER` runs one gateway contestant under a profiler (see [`Server`]).
//!
//! Rounds interleave the contestants, and each round starts with a different one. Two token
//! workloads: a pool of 1,000 valid tokens drawn at random, and never-seen tokens (each round
//! reads its own slice of a pre-signed file, so no server sees a token twice).
//!
//! Then the connections' memory ([`connection_memory`]): `gateway`, `hyper-proxy` and
//! `nginx-proxy` holding `--idle-connections` idle keep-alive connections, and after a spike of
//! `--spike-connections` (`bench::conns` opens them, from several loopback addresses).
//!
//! Last, the cost curve ([`cost_curve`]): the pool workload again at `--curve` connections
//! (16, 64, 256 and 1,000) for `gateway`, `hyper-proxy`, `nginx-proxy` and `haproxy-jwt`, with
//! CPU per request, p99 and requests/s at each.
//!
//! Usage: edge-bench [--rounds N (5)] [--seconds S] [--connections C] [--rules N]
//!                   [--fresh-per-round N] [--only pool|fresh|curve|connections]
//!                   [--curve C,C,...] [--curve-seconds S]
//!                   [--idle-connections N] [--spike-connections N] [--spike-seconds S]
//!                   [--after-spike-seconds S]

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
    /// 400,000: on a fast host period the gateway serves about 350,000 in a 10 s round.
    #[arg(long, default_value_t = 400_000)]
    fresh_per_round: usize,
    /// Run one part only: a token workload, or the connection memory (idle connections and
    /// a spike).
    #[arg(long, value_parser = ["pool", "fresh", "curve", "connections"])]
    only: Option<String>,
    /// Connection counts of the cost curve (the pool workload, `--rounds` rounds at each).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,64,256,1000",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    curve: Vec<u32>,
    /// Seconds per round of the cost curve.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..))]
    curve_seconds: u64,
    /// Idle keep-alive connections held open at once, for their memory.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Connections of the spike, each sending requests for `--spike-seconds`.
    #[arg(long, default_value_t = 4_000)]
    spike_connections: usize,
    #[arg(long, default_value_t = 10)]
    spike_seconds: u64,
    /// Seconds resident memory is followed after the spike.
    #[arg(long, default_value_t = 60)]
    after_spike_seconds: u64,
    /// Leave out `gateway-2iss` (to measure a gateway built before `[[issuers]]`).
    #[arg(long)]
    no_two_issuers: bool,
    /// Leave out `gateway-trace0` and `gateway-trace1` (a gateway built before `[tracing]`).
    #[arg(long)]
    no_tracing: bool,
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

#[derive(Clone)]
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

/// Checks the machine, starts the servers, makes sure every contestant accepts the tokens,
/// runs the rounds of each workload and prints the report.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    stop_everything_on_signal()?;
    let tools = Tools::find()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cpus >= 2, "the benchmark pins the load and the servers to two different CPUs; this machine has {cpus}");
    let bench = repo_root().join("target/bench");
    let work = bench.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // Kept when the run fails: the servers' logs are there.
    eprintln!("work directory: {}", work.display());
    let fresh_needed = if Workload::Fresh.chosen(&args) {
        args.rounds * args.fresh_per_round
    } else {
        0
    };
    let tokens = Tokens::ensure(&bench.join("tokens"), fresh_needed)?;
    let script = work.join("tokens.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let ports = Ports::free()?;
    let servers = Servers::start(
        &tools,
        &work,
        &ports,
        &tokens,
        !args.no_two_issuers,
        !args.no_tracing,
    )
    .await?;
    let million = if args.rules > 0 && Workload::Pool.chosen(&args) {
        Some(Million::start(args.rules, &work, &ports, &tokens).await?)
    } else {
        None
    };
    let empty_memory = memory_mib(servers.gateway.pid());
    let load = Load {
        wrk: tools.wrk,
        script,
        seconds: args.seconds,
        connections: args.connections,
        upstream_pid: servers.direct.pid(),
    };

    let pool_contestants = servers.pool_contestants(million.as_ref());
    check_contestants(&pool_contestants, &tokens).await?;
    let pool = Workload::Pool
        .chosen(&args)
        .then(|| run_rounds(&load, Workload::Pool, &pool_contestants, &args, &tokens))
        .transpose()?;
    let fresh_contestants = [&servers.haproxy_jwt, &servers.gateway];
    let fresh = Workload::Fresh
        .chosen(&args)
        .then(|| run_rounds(&load, Workload::Fresh, &fresh_contestants, &args, &tokens))
        .transpose()?;

    let connections = match args.only.as_deref() {
        None | Some("connections") => Some(connection_memory(&servers, &tokens, &args).await?),
        Some(_) => None,
    };
    // After the connections' memory, whose idle figures want processes that have not yet
    // served a thousand connections.
    let curve = match args.only.as_deref() {
        None | Some("curve") => Some(cost_curve(&load, &servers, &args, &tokens)?),
        Some(_) => None,
    };

    let report = Report {
        args: &args,
        pool_order: pool_contestants.iter().map(|s| s.name).collect(),
        pool: pool.as_ref(),
        fresh: fresh.as_ref(),
        curve: curve.as_ref(),
        million: million.as_ref().map(Million::report).unwrap_or_default(),
        empty_memory,
    };
    println!("{}", report.text());
    if let Some(curve) = &curve {
        println!("{}", curve.text());
    }
    if let Some(connections) = &connections {
        println!("{connections}");
    }
    print_span_counts(&servers, &ports).await;
    if let Some(pool) = &pool {
        charts(
            "edge-pool",
            "pool of 1,000 tokens",
            pool,
            &report.pool_order,
        )?;
    }
    if let Some(curve) = &curve {
        curve.charts()?;
    }
    if let Some(fresh) = &fresh {
        charts(
            "edge-fresh",
            "never-seen tokens",
            fresh,
            &["haproxy-jwt", "gateway"],
        )?;
    }
    drop(million);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A workload's charts: requests/s (median, with the range over rounds), CPU per request,
/// and the latency percentiles, by contestant.
fn charts(file: &str, workload: &str, rounds: &Rounds, order: &[&'static str]) -> Result<()> {
    use bench::charts::{self, Bar};
    let dir = charts::dir();
    std::fs::create_dir_all(&dir)?;
    let present: Vec<(&str, &Summary)> = order
        .iter()
        .filter_map(|name| rounds.summaries.get(name).map(|s| (*name, s)))
        .collect();
    let spread = |s: &Summary, f: fn(&Sample) -> f64| {
        let values = s.samples.iter().map(f);
        (
            values.clone().fold(f64::MAX, f64::min),
            values.fold(0.0, f64::max),
        )
    };
    let throughput: Vec<Bar<'_>> = present
        .iter()
        .map(|(name, s)| Bar {
            name,
            value: s.rps(),
            range: Some(spread(s, |x| x.rps)),
        })
        .collect();
    let cpu: Vec<Bar<'_>> = present
        .iter()
        .filter(|(_, s)| s.cpu() > 0.0)
        .map(|(name, s)| Bar {
            name,
            value: s.cpu(),
            range: Some(spread(s, |x| x.cpu_us)),
        })
        .collect();
    let latency: Vec<(&str, Vec<f64>)> = present
        .iter()
        .map(|(name, s)| (*name, vec![s.p50() / 1000.0, s.p99() / 1000.0]))
        .collect();
    let written = [
        dir.join(format!("{file}-throughput.svg")),
        dir.join(format!("{file}-cpu.svg")),
        dir.join(format!("{file}-latency.svg")),
    ];
    charts::bars(
        &written[0],
        &format!("Requests per second, {workload} (median; line: range over rounds)"),
        "requests/s",
        &throughput,
    )?;
    charts::bars(
        &written[1],
        &format!("CPU per request of the contestant's own process, {workload}"),
        "CPU microseconds per request",
        &cpu,
    )?;
    charts::grouped(
        &written[2],
        &format!("Latency, {workload} (median over rounds)"),
        "milliseconds",
        &["p50", "p99"],
        &latency,
    )?;
    for path in written {
        println!("chart: {}", path.display());
    }
    Ok(())
}

/// Resident memory of the gateway, `hyper-proxy` and `nginx-proxy`: holding
/// `--idle-connections` idle keep-alive connections (per connection, measured first, on
/// fresh processes), then after a spike of `--spike-connections` busy connections for
/// `--spike-seconds` (the curve, every 5 s, for `--after-spike-seconds`, against the idle
/// baseline). The connections come from the benchmark itself (`bench::conns`), over eight
/// loopback source addresses, on the load CPU.
async fn connection_memory(servers: &Servers, tokens: &Tokens, args: &Args) -> Result<String> {
    use bench::conns;
    run(Command::new("taskset").args([
        "-a",
        "-p",
        "-c",
        LOAD_CPU,
        &std::process::id().to_string(),
    ]))?;
    let pool: Vec<String> = std::fs::read_to_string(&tokens.pool)?
        .lines()
        .map(str::to_string)
        .collect();
    let request = |n: usize| conns::get_with(&pool[n % pool.len()]);
    let mib = |pid: u32| memory_mib(pid).0;
    let contestants = [&servers.gateway, &servers.hyper_proxy, &servers.nginx_proxy];
    let idle = args.idle_connections;
    // Fresh processes first: memory an allocator kept from the spike would be reused by the
    // idle connections and hide their cost.
    let baseline: Vec<f64> = contestants.iter().map(|s| mib(s.pid())).collect();
    let mut out = format!(
        "\n### {idle} idle keep-alive connections\n\nEach connection answered one request, then left open; resident memory (VmRSS) before, with them open (after 2 s), and the difference per connection. From {} loopback source addresses.\n\n| contestant | before MiB | with {idle} idle MiB | KiB per connection |\n|---|---:|---:|---:|\n",
        conns::SOURCES
    );
    for server in contestants {
        let before = mib(server.pid());
        let held = conns::open_idle(server.port, idle, request, 500)
            .await
            .with_context(|| format!("{}: opening {idle} idle connections", server.name))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with = mib(server.pid());
        drop(held);
        let _ = writeln!(
            out,
            "| {} | {before:.1} | {with:.1} | {:.2} |",
            server.name,
            (with - before) * 1024.0 / idle as f64
        );
        eprintln!("{}: {idle} idle connections measured", server.name);
        // The server closes what the benchmark dropped before the next one is measured.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (spike, seconds) = (args.spike_connections, args.spike_seconds);
    let marks: Vec<u64> = (0..=args.after_spike_seconds).step_by(5).collect();
    let _ = write!(
        out,
        "\n### After a spike of {spike} connections for {seconds} s\n\nResident memory (MiB): idle baseline (the process before any of this section's connections), before the spike, at its end, and every 5 s after its last connection closed.\n\n| contestant | idle baseline | before | spike's end |{} within 2× of the idle baseline at the end | requests in the spike | failed connections |\n|---|---:|---:|---:|{}---|---:|---:|\n",
        marks.iter().map(|m| format!(" +{m} s |")).collect::<String>(),
        "---:|".repeat(marks.len()),
    );
    for (server, baseline) in contestants.iter().zip(&baseline) {
        let before = mib(server.pid());
        let burst = conns::burst(server.port, spike, Duration::from_secs(seconds), request).await?;
        let end = mib(server.pid());
        let closed = Instant::now();
        let mut curve = Vec::new();
        for mark in &marks {
            let at = closed + Duration::from_secs(*mark);
            tokio::time::sleep_until(at.into()).await;
            curve.push(mib(server.pid()));
        }
        let _ = writeln!(
            out,
            "| {} | {baseline:.1} | {before:.1} | {end:.1} |{} {} | {} | {} |",
            server.name,
            curve
                .iter()
                .map(|m| format!(" {m:.1} |"))
                .collect::<String>(),
            if curve.last().is_some_and(|m| *m <= 2.0 * baseline) {
                "yes"
            } else {
                "**no**"
            },
            burst.requests,
            burst.failed_connections,
        );
        eprintln!("{}: spike measured", server.name);
    }
    Ok(out)
}

/// What the traced gateways did with their spans over every round (from their `/metrics`).
async fn print_span_counts(servers: &Servers, ports: &Ports) {
    for (n, server) in servers.gateway_trace.iter().enumerate() {
        let url = format!(
            "http://127.0.0.1:{}/metrics",
            ports.gateway_trace[2 * n + 1]
        );
        let text = system_tests::get_text(&url).await.unwrap_or_default();
        let counts: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("gateway_trace_spans_total{outcome=\""))
            .map(|l| l.replace("\"} ", ": "))
            .collect();
        let counts = if counts.is_empty() {
            "none ended".to_string()
        } else {
            counts.join(", ")
        };
        println!("{} spans: {counts}", server.name);
    }
}

/// The programs the benchmark runs, found before anything starts.
struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools> {
        let (wrk, nginx, haproxy) = (which("wrk")?, which("nginx")?, which("haproxy")?);
        which("taskset")?;
        Ok(Tools {
            wrk,
            nginx,
            haproxy,
        })
    }
}

/// The loopback ports of a run, one for each listener.
struct Ports {
    authz: u16,
    upstream: u16,
    nginx_proxy: u16,
    hyper_proxy: u16,
    haproxy: u16,
    gateway: u16,
    gateway_admin: u16,
    authz_1m: u16,
    gateway_1m: u16,
    gateway_1m_admin: u16,
    gateway_2iss: u16,
    gateway_2iss_admin: u16,
    /// `gateway-trace0`, `gateway-trace1` and their admin listeners; their collector.
    gateway_trace: [u16; 4],
    otlp: u16,
}

impl Ports {
    fn free() -> Result<Ports> {
        let p = free_ports(17)?;
        Ok(Ports {
            authz: p[0],
            upstream: p[1],
            nginx_proxy: p[2],
            haproxy: p[3],
            gateway: p[4],
            gateway_admin: p[5],
            authz_1m: p[6],
            gateway_1m: p[7],
            gateway_1m_admin: p[8],
            hyper_proxy: p[9],
            gateway_2iss: p[10],
            gateway_2iss_admin: p[11],
            gateway_trace: [p[12], p[13], p[14], p[15]],
            otlp: p[16],
        })
    }
}

/// Every contestant but `gateway-1m`, and the revocation stack of `gateway`: NATS and the
/// authz-server (for its heartbeats). Dropped in this order, the gateway first.
struct Servers {
    gateway: Server,
    /// The same gateway with a second issuer configured, listed first.
    gateway_2iss: Option<Server>,
    /// The same gateway tracing at ratio 0 and 1, and their collector.
    gateway_trace: Vec<Server>,
    _collector: Option<Server>,
    haproxy_jwt: Server,
    hyper_proxy: Server,
    nginx_proxy: Server,
    direct: Server,
    /// Only kept running, for `gateway`.
    _authz: Authz,
    _nats: Nats,
}

impl Servers {
    /// Starts them all, each pinned to the server CPU, and waits for the gateway to be ready.
    async fn start(
        tools: &Tools,
        work: &Path,
        ports: &Ports,
        tokens: &Tokens,
        two_issuers_too: bool,
        tracing_too: bool,
    ) -> Result<Servers> {
        // The revocation stack of `gateway`.
        let nats = Nats::start()?;
        let authz_dir = work.join("authz");
        std::fs::create_dir_all(&authz_dir)?;
        let authz =
            Authz::spawn_process(&authz_dir, ports.authz, &[nats.url()], &retention()).await?;
        pin(nats.pid())?;
        pin(authz.pid())?;

        // The upstream, and the plain proxy in front of it.
        let upstream_port = ports.upstream;
        let direct = spawn_nginx(
            &tools.nginx,
            work,
            "direct",
            "upstream",
            upstream_port,
            format!("  server {{\n    listen 127.0.0.1:{upstream_port};\n    location / {{ default_type text/plain; return 200 \"hello from the upstream\\n\"; }}\n  }}\n"),
        )?;
        let proxy_port = ports.nginx_proxy;
        let nginx_proxy = spawn_nginx(
            &tools.nginx,
            work,
            "nginx-proxy",
            "nginx-proxy",
            proxy_port,
            format!("  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 128; keepalive_requests 10000000; }}\n  server {{\n    listen 127.0.0.1:{proxy_port};\n    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n"),
        )?;

        // The floor under the gateway: hyper's server and client and nothing else.
        let hyper_proxy = Server::spawn_wrapped(
            "hyper-proxy",
            ports.hyper_proxy,
            &system_tests::binary("hyper-proxy")?,
            &[
                "--listen",
                &format!("127.0.0.1:{}", ports.hyper_proxy),
                "--upstream",
                &format!("127.0.0.1:{upstream_port}"),
            ],
            &work.join("hyper-proxy.log"),
        )?;

        let haproxy_jwt = spawn_haproxy_jwt(&tools.haproxy, work, ports, tokens)?;

        // The gateway, fed by the revocation stack above.
        let jwks = gateway_jwks(tokens, &authz, &work.join("gateway-jwks.json")).await?;
        let config = gateway_config(
            ports.gateway,
            ports.gateway_admin,
            ports,
            &jwks,
            &nats.url(),
            "gateway-1",
        );
        let (gateway, _) = start_gateway(
            "gateway",
            work,
            ports.gateway,
            ports.gateway_admin,
            &config,
            true,
        )
        .await?;
        let config = two_issuers(&gateway_config(
            ports.gateway_2iss,
            ports.gateway_2iss_admin,
            ports,
            &jwks,
            &nats.url(),
            "gateway-3",
        ));
        let gateway_2iss = if two_issuers_too {
            let (server, _) = start_gateway(
                "gateway-2iss",
                work,
                ports.gateway_2iss,
                ports.gateway_2iss_admin,
                &config,
                true,
            )
            .await?;
            Some(server)
        } else {
            None
        };
        let (gateway_trace, collector) = if tracing_too {
            let collector = spawn_collector(work, ports.otlp).await?;
            let mut traced = Vec::new();
            for (n, name) in ["gateway-trace0", "gateway-trace1"].into_iter().enumerate() {
                let (port, admin) = (ports.gateway_trace[2 * n], ports.gateway_trace[2 * n + 1]);
                let config = format!(
                    "{}
[tracing]
otlp_endpoint = \"http://127.0.0.1:{}/v1/traces\"\nsampling_ratio = {n}.0\n",
                    gateway_config(port, admin, ports, &jwks, &nats.url(), "gateway-1"),
                    ports.otlp
                );
                traced.push(
                    start_gateway(name, work, port, admin, &config, true)
                        .await?
                        .0,
                );
            }
            (traced, Some(collector))
        } else {
            (Vec::new(), None)
        };
        Ok(Servers {
            gateway,
            gateway_2iss,
            gateway_trace,
            _collector: collector,
            haproxy_jwt,
            hyper_proxy,
            nginx_proxy,
            direct,
            _authz: authz,
            _nats: nats,
        })
    }

    /// The contestants of the pool workload, `gateway-1m` last if there is one.
    fn pool_contestants<'a>(&'a self, million: Option<&'a Million>) -> Vec<&'a Server> {
        let mut contestants = vec![
            &self.direct,
            &self.nginx_proxy,
            &self.hyper_proxy,
            &self.haproxy_jwt,
            &self.gateway,
        ];
        contestants.extend(&self.gateway_2iss);
        contestants.extend(&self.gateway_trace);
        if let Some(million) = million {
            contestants.push(&million.gateway);
        }
        contestants
    }
}

/// The authz-server's setting that keeps the stream's events as long as the gateway accepts
/// tokens.
fn retention() -> String {
    format!("max_ttl_s = {TOKEN_TTL}")
}

/// Starts one nginx with the `http` block's servers; its configuration file and log are named
/// after `file`.
fn spawn_nginx(
    nginx: &Path,
    work: &Path,
    name: &'static str,
    file: &str,
    port: u16,
    http: String,
) -> Result<Server> {
    let temp = work.join("nginx-temp");
    std::fs::create_dir_all(&temp)?;
    let common = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {log} warn;\npid {pid};\nworker_rlimit_nofile 20000;\nevents {{ worker_connections 16384; }}\n",
        log = work.join("nginx-error.log").display(),
        pid = work.join(format!("nginx-{port}.pid")).display(),
    );
    let temp_paths = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {};\n", temp.join(t).display()))
        .collect::<String>();
    let conf = work.join(format!("{file}.conf"));
    std::fs::write(
        &conf,
        format!("{common}http {{\n  access_log off;\n{temp_paths}  keepalive_requests 10000000;\n{http}}}\n"),
    )?;
    Server::spawn(
        name,
        port,
        nginx,
        &[
            "-p",
            &work.display().to_string(),
            "-c",
            &conf.display().to_string(),
        ],
        &work.join(format!("{file}.log")),
    )
}

/// Starts HAProxy verifying the JWT, with a map of 1,000 revoked `jti`s.
fn spawn_haproxy_jwt(
    haproxy: &Path,
    work: &Path,
    ports: &Ports,
    tokens: &Tokens,
) -> Result<Server> {
    let (haproxy_port, upstream_port) = (ports.haproxy, ports.upstream);
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
    Server::spawn(
        "haproxy-jwt",
        haproxy_port,
        haproxy,
        &["-db", "-f", &haproxy_conf.display().to_string()],
        &work.join("haproxy.log"),
    )
}

/// A gateway's configuration: one worker thread, the keys in `jwks` (see [`gateway_jwks`]),
/// every path routed to the upstream, and the revocation feed from the NATS server at
/// `nats_url` as `id`.
fn gateway_config(
    port: u16,
    admin: u16,
    ports: &Ports,
    jwks: &Path,
    nats_url: &str,
    id: &str,
) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = {jwks:?}\nalgorithms = [\"RS256\"]\nmax_ttl_s = {ttl}\nworker_threads = 1\ndrain_delay_ms = 0\nshutdown_grace_s = 1\n\n[limits]\nmax_concurrent_requests = 4096\nmax_connections = 12000\n\n[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:{upstream_port}\"\n\n{nats}",
        ttl = TOKEN_TTL,
        upstream_port = ports.upstream,
        nats = Pki::get().nats_section(&[nats_url.to_string()], id, id),
    )
}

/// The traced gateways' collector: the tests' OTLP receiver, answering without decoding,
/// pinned to the server CPU. Waits until it listens.
async fn spawn_collector(work: &Path, port: u16) -> Result<Server> {
    let python = repo_root().join("target/interop-venv/bin/python");
    let script = repo_root().join("system-tests/interop/otlp_receiver.py");
    let port_file = work.join("otlp.port");
    let _ = std::fs::remove_file(&port_file);
    let port_text = port.to_string();
    let args = [
        script.to_str().unwrap_or_default(),
        port_file.to_str().unwrap_or_default(),
        "/dev/null",
        "--discard",
        "--port",
        &port_text,
    ];
    let collector = Server::spawn("otlp-sink", port, &python, &args, &work.join("otlp.log"))?;
    system_tests::eventually(Duration::from_secs(20), "the OTLP sink", || {
        let ready = port_file.exists();
        async move { ready.then_some(()) }
    })
    .await?;
    Ok(collector)
}

/// `config` (one issuer) with a second issuer listed before it, of the same keys: every
/// token of the benchmark, of the second-listed issuer, first misses the other's token cache.
fn two_issuers(config: &str) -> String {
    let one_issuer = |line: &str| {
        ["issuer =", "audiences =", "jwks_file =", "algorithms ="]
            .iter()
            .any(|key| line.starts_with(key))
    };
    let jwks = config
        .lines()
        .find_map(|line| line.strip_prefix("jwks_file = "))
        .unwrap_or_default();
    let rest: String = config
        .lines()
        .filter(|line| !one_issuer(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let (top, tables) = rest.split_once("\n[").unwrap_or((&rest, ""));
    format!(
        "{top}\n[hub]\njwks_file = {jwks}\n\n[[issuers]]\nissuer = \"https://other-issuer.bench\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = {jwks}\n\n[[issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_file = {jwks}\n\n[{tables}"
    )
}

/// The JWK Set a gateway loads: the benchmark's token key, and the heartbeat key of the
/// authz-server whose stream it follows (it verifies heartbeats and snapshot manifests, and
/// without it the gateway never becomes fresh). Written to `dest`.
async fn gateway_jwks(tokens: &Tokens, authz: &Authz, dest: &Path) -> Result<PathBuf> {
    let mut jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&tokens.jwks)?)?;
    let published: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", authz.url))
        .await?
        .json()
        .await?;
    let heartbeat = published["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["use"] == revocation::freshness::HEARTBEAT_KEY_USE)
        .context("the authz-server publishes no heartbeat key")?
        .clone();
    jwks["keys"]
        .as_array_mut()
        .context("the token key set has no keys")?
        .push(heartbeat);
    std::fs::write(dest, serde_json::to_vec(&jwks)?)?;
    Ok(dest.to_path_buf())
}

/// Writes `config` to `<name>.toml`, starts the gateway (under its profiler wrapper if
/// `wrapped`, see [`Server::spawn_wrapped`]) and waits for it to be ready; also returns the
/// time from start to ready.
async fn start_gateway(
    name: &'static str,
    work: &Path,
    port: u16,
    admin: u16,
    config: &str,
    wrapped: bool,
) -> Result<(Server, Duration)> {
    let conf = work.join(format!("{name}.toml"));
    std::fs::write(&conf, config)?;
    let started = Instant::now();
    let (program, args) = (
        system_tests::binary("gateway")?,
        ["--config", &conf.display().to_string()],
    );
    let log = work.join(format!("{name}.log"));
    let gateway = if wrapped {
        Server::spawn_wrapped(name, port, &program, &args, &log)?
    } else {
        Server::spawn(name, port, &program, &args, &log)?
    };
    wait_ready(admin, Duration::from_secs(120)).await?;
    Ok((gateway, started.elapsed()))
}

/// The `gateway-1m` contestant: a gateway on a stack of its own, with a million revocation
/// rules (`--rules`) replayed from its stream. Dropped in this order, the gateway first.
struct Million {
    gateway: Server,
    /// Only kept running, for `gateway`.
    _nats: Nats,
    _authz: Authz,
    /// Rules seeded, and how long seeding took.
    rules: usize,
    seeded: Duration,
    /// From the gateway's start to its `/readyz` answering 200.
    ready: Duration,
    /// Rules the gateway holds once ready, by its metrics (-1 if it would not say).
    held: f64,
    /// VmRSS and VmHWM once ready, in MiB.
    memory: (f64, f64),
}

impl Million {
    /// Seeds the rules and waits for the authz-server's snapshot of them, so that the
    /// gateway loads it; then starts the gateway and prints [`Million::report`].
    async fn start(rules: usize, work: &Path, ports: &Ports, tokens: &Tokens) -> Result<Million> {
        let nats = Nats::start()?;
        let dir = work.join("authz-1m");
        std::fs::create_dir_all(&dir)?;
        // Snapshots checked every second, so that the one of the million rules is taken before
        // the gateway starts (and loads it) rather than during a round, on the servers' CPU.
        let authz = Authz::spawn_process(
            &dir,
            ports.authz_1m,
            &[nats.url()],
            &format!(
                "{}\n{}",
                system_tests::seed::snapshot_once_seeded(rules),
                retention()
            ),
        )
        .await?;
        pin(nats.pid())?;
        pin(authz.pid())?;
        eprintln!("seeding {rules} revocation rules...");
        let started = Instant::now();
        let seeded_events =
            system_tests::seed::seed_revocations_for(&nats.url(), &authz, ISSUER, rules).await?;
        let seeded = started.elapsed();
        system_tests::seed::wait_for_snapshot(&authz, &seeded_events, Duration::from_secs(120))
            .await?;
        let (port, admin) = (ports.gateway_1m, ports.gateway_1m_admin);
        let jwks = gateway_jwks(tokens, &authz, &work.join("gateway-1m-jwks.json")).await?;
        let config = gateway_config(port, admin, ports, &jwks, &nats.url(), "gateway-2");
        let (gateway, ready) =
            start_gateway("gateway-1m", work, port, admin, &config, false).await?;
        let memory = memory_mib(gateway.pid());
        let held = metric(admin, "gateway_revocation_rules")
            .await
            .unwrap_or(-1.0);
        let million = Million {
            gateway,
            _nats: nats,
            _authz: authz,
            rules,
            seeded,
            ready,
            held,
            memory,
        };
        eprintln!("{}", million.report());
        Ok(million)
    }

    /// The section of the report on the million rules.
    fn report(&self) -> String {
        let (rss, peak) = self.memory;
        format!(
            "\n### One million revocation rules\n\n| figure | value |\n|---|---:|\n| rules seeded into the stream | {} (in {:.1} s) |\n| rules held by the new gateway | {:.0} |\n| new gateway: start to ready (snapshot loaded, then the stream after it) | {:.2} s |\n| resident memory after ready (VmRSS) | {rss:.1} MiB |\n| peak resident memory (VmHWM) | {peak:.1} MiB |\n",
            self.rules,
            self.seeded.as_secs_f64(),
            self.held,
            self.ready.as_secs_f64(),
        )
    }
}

/// Makes sure that every contestant answers 200 to a valid token of the pool, and those that
/// check tokens 401 to a bad one, before anything is measured.
async fn check_contestants(contestants: &[&Server], tokens: &Tokens) -> Result<()> {
    let sample_token = std::fs::read_to_string(&tokens.pool)?
        .lines()
        .next()
        .context("empty token pool")?
        .to_string();
    for server in contestants {
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
    Ok(())
}

/// The two token workloads.
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// The pool of 1,000 tokens, drawn at random.
    Pool,
    /// Never-seen tokens: each round reads its own slice of the pre-signed file, in order.
    Fresh,
}

impl Workload {
    /// Whether `--only` leaves this workload in.
    fn chosen(self, args: &Args) -> bool {
        let name = match self {
            Workload::Pool => "pool",
            Workload::Fresh => "fresh",
        };
        args.only.as_deref().is_none_or(|only| only == name)
    }
}

/// What the rounds of one workload measured.
struct Rounds {
    /// Each contestant's samples, by name.
    summaries: BTreeMap<&'static str, Summary>,
    /// Requests that reused a token of the round's slice (never-seen tokens only).
    repeats: u64,
}

/// Runs `--rounds` rounds of a workload; each round measures every contestant once, starting
/// with a different one, and prints its figures as it goes.
fn run_rounds(
    load: &Load,
    workload: Workload,
    contestants: &[&Server],
    args: &Args,
    tokens: &Tokens,
) -> Result<Rounds> {
    let (label, mode) = match workload {
        Workload::Pool => ("pool", "random"),
        Workload::Fresh => ("fresh", "sequential"),
    };
    let mut rounds = Rounds {
        summaries: BTreeMap::new(),
        repeats: 0,
    };
    for round in 0..args.rounds {
        let file = match workload {
            Workload::Pool => tokens.pool.clone(),
            Workload::Fresh => tokens.fresh_slice(round, args.fresh_per_round)?,
        };
        for k in 0..contestants.len() {
            let server = contestants[(round + k) % contestants.len()];
            let s = load.measure(server, &file, mode)?;
            if workload == Workload::Fresh {
                rounds.repeats += s.requests.saturating_sub(args.fresh_per_round as u64);
            }
            eprintln!(
                "{label:<5} c{:<4} round {} {:<12} {:>8.0} req/s p99 {:.2} ms cpu {:.1} µs/req",
                load.connections,
                round + 1,
                server.name,
                s.rps,
                s.p99_us / 1000.0,
                s.cpu_us
            );
            rounds
                .summaries
                .entry(server.name)
                .or_default()
                .samples
                .push(s);
        }
        if workload == Workload::Fresh {
            let _ = std::fs::remove_file(file);
        }
    }
    Ok(rounds)
}

/// Everything the run printed at its end: the tables, the million rules, the targets.
struct Report<'a> {
    args: &'a Args,
    /// The pool workload's contestants, in the order of its table.
    pool_order: Vec<&'static str>,
    pool: Option<&'a Rounds>,
    fresh: Option<&'a Rounds>,
    curve: Option<&'a Curve>,
    /// [`Million::report`], or nothing.
    million: String,
    /// `gateway`'s VmRSS and VmHWM at start, in MiB.
    empty_memory: (f64, f64),
}

impl Report<'_> {
    /// The report, in Markdown as BENCHMARKS.md has it.
    fn text(&self) -> String {
        let args = self.args;
        let mut report = format!(
            "\n## Edge benchmark\n\n{} rounds of {} s per contestant and workload, wrk -t1 -c{} pinned to CPU {LOAD_CPU}, servers pinned to CPU {SERVER_CPU}. Figures are medians over the rounds.\n",
            args.rounds, args.seconds, args.connections
        );
        if let Some(pool) = self.pool {
            report.push_str(&table(
                "Pool of 1,000 tokens",
                &pool.summaries,
                &self.pool_order,
            ));
            report.push_str(&floor_of_hyper(&pool.summaries));
        }
        if let Some(fresh) = self.fresh {
            report.push_str(&table(
                "Never-seen tokens (every request a token the server has not seen)",
                &fresh.summaries,
                &["haproxy-jwt", "gateway"],
            ));
            if fresh.repeats > 0 {
                let _ = writeln!(
                    report,
                    "\nWARNING: {} requests reused a token (raise --fresh-per-round).",
                    fresh.repeats
                );
            }
        }
        report.push_str(&self.million);
        let (empty_rss, empty_peak) = self.empty_memory;
        let _ = writeln!(
            report,
            "\nGateway on an empty set: VmRSS {empty_rss:.1} MiB, VmHWM {empty_peak:.1} MiB at start."
        );
        report.push_str(&self.targets());
        report
    }

    /// The targets of BENCHMARKS.md, each with what was measured and whether it was met.
    fn targets(&self) -> String {
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
        if let Some(pool) = self.pool.map(|r| &r.summaries) {
            let (gw, ng, ha) = (
                rps(pool, "gateway"),
                rps(pool, "nginx-proxy"),
                rps(pool, "haproxy-jwt"),
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
            let hy = rps(pool, "hyper-proxy");
            target(
                &format!(
                    "pool, {} connections: gateway ≥ 0.92× hyper-proxy requests/s",
                    self.args.connections
                ),
                format!("{:.2}×", gw / hy),
                gw >= 0.92 * hy,
            );
            if pool.contains_key("gateway-2iss") {
                let g2 = rps(pool, "gateway-2iss");
                target(
                    "two issuers: requests/s within 2% of one issuer",
                    format!("{:+.1}%", (g2 / gw - 1.0) * 100.0),
                    g2 >= 0.98 * gw,
                );
            }
            if pool.contains_key("gateway-1m") {
                let g1 = rps(pool, "gateway-1m");
                target(
                    "1M rules: requests/s within 5% of the empty set",
                    format!("{:+.1}%", (g1 / gw - 1.0) * 100.0),
                    g1 >= 0.95 * gw,
                );
            }
        }
        if let Some(at) = self.curve.and_then(|c| c.at(1000)) {
            let (gw, hy) = (rps(at, "gateway"), rps(at, "hyper-proxy"));
            target(
                "pool, 1,000 connections: gateway ≥ 0.85× hyper-proxy requests/s",
                format!("{:.2}×", gw / hy),
                gw >= 0.85 * hy,
            );
            let p99 = |k: &str| at.get(k).map_or(f64::NAN, Summary::p99);
            let (gp, hp) = (p99("gateway"), p99("hyper-proxy"));
            target(
                "pool, 1,000 connections: gateway p99 ≤ 1.2× hyper-proxy's",
                format!(
                    "{:.1} ms vs {:.1} ms ({:.2}×)",
                    gp / 1000.0,
                    hp / 1000.0,
                    gp / hp
                ),
                gp <= 1.2 * hp,
            );
        }
        if let Some(fresh) = self.fresh.map(|r| &r.summaries) {
            let (gw, ha) = (rps(fresh, "gateway"), rps(fresh, "haproxy-jwt"));
            target(
                "never-seen: gateway ≥ 1.2× haproxy-jwt requests/s",
                format!("{:.2}×", gw / ha),
                gw >= 1.2 * ha,
            );
        }
        targets
    }
}

/// One figure of a contestant's rounds, such as [`Summary::cpu`].
type Measure = fn(&Summary) -> f64;

/// The pool workload at each connection count of `--curve`.
struct Curve {
    /// The contestants, in the order of the tables.
    names: Vec<&'static str>,
    /// The rounds at each connection count, in the order of `--curve`.
    levels: Vec<(u32, Rounds)>,
    rounds: usize,
    seconds: u64,
}

/// Runs the pool workload's rounds for `gateway`, `hyper-proxy`, `nginx-proxy` and
/// `haproxy-jwt` at every connection count of `--curve`, with rounds of `--curve-seconds`.
fn cost_curve(load: &Load, servers: &Servers, args: &Args, tokens: &Tokens) -> Result<Curve> {
    let contestants = [
        &servers.gateway,
        &servers.hyper_proxy,
        &servers.nginx_proxy,
        &servers.haproxy_jwt,
    ];
    let mut levels = Vec::new();
    for &connections in &args.curve {
        let load = Load {
            connections,
            seconds: args.curve_seconds,
            ..load.clone()
        };
        let rounds = run_rounds(&load, Workload::Pool, &contestants, args, tokens)?;
        levels.push((connections, rounds));
    }
    Ok(Curve {
        names: contestants.iter().map(|s| s.name).collect(),
        levels,
        rounds: args.rounds,
        seconds: args.curve_seconds,
    })
}

impl Curve {
    /// The summaries at `connections`, if the curve measured that count.
    fn at(&self, connections: u32) -> Option<&BTreeMap<&'static str, Summary>> {
        self.levels
            .iter()
            .find(|(c, _)| *c == connections)
            .map(|(_, r)| &r.summaries)
    }

    /// One measure (a column per connection count) for every contestant.
    fn measure(&self, f: Measure) -> Vec<(&'static str, Vec<f64>)> {
        self.names
            .iter()
            .map(|name| {
                let values = self
                    .levels
                    .iter()
                    .map(|(_, r)| r.summaries.get(name).map_or(f64::NAN, f));
                (*name, values.collect())
            })
            .collect()
    }

    /// The curve's tables, in Markdown as BENCHMARKS.md has them.
    fn text(&self) -> String {
        let header: String = self.levels.iter().map(|(c, _)| format!(" {c} |")).collect();
        let rule = "---:|".repeat(self.levels.len());
        let mut out = format!(
            "\n### The cost curve: pool of 1,000 tokens by connections\n\n{} rounds of {} s per contestant and connection count, wrk -t1 pinned to CPU {LOAD_CPU}, servers to CPU {SERVER_CPU}; medians over the rounds.\n",
            self.rounds, self.seconds
        );
        // Title, measure, divisor, decimals.
        let measures: [(&str, Measure, f64, usize); 3] = [
            ("CPU µs per request", Summary::cpu, 1.0, 1),
            ("p99 ms", Summary::p99, 1000.0, 2),
            ("requests/s", Summary::rps, 1.0, 0),
        ];
        for (title, f, scale, prec) in measures {
            let _ = write!(
                out,
                "\n{title}, by connections:\n\n| contestant |{header}\n|---|{rule}\n"
            );
            for (name, values) in self.measure(f) {
                let cells: String = values
                    .iter()
                    .map(|v| format!(" {:.prec$} |", v / scale))
                    .collect();
                let _ = writeln!(out, "| {name} |{cells}");
            }
        }
        let over: Vec<String> = self
            .levels
            .iter()
            .map(|(c, r)| {
                let cpu = |k: &str| r.summaries.get(k).map_or(f64::NAN, Summary::cpu);
                let rps = |k: &str| r.summaries.get(k).map_or(f64::NAN, Summary::rps);
                format!(
                    "{:+.1} µs ({:.2}× its requests/s) at {c}",
                    cpu("gateway") - cpu("hyper-proxy"),
                    rps("gateway") / rps("hyper-proxy")
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\nThe gateway's CPU a request over hyper-proxy's: {}.",
            over.join(", ")
        );
        out
    }

    /// `edge-curve-cpu.svg` and `edge-curve-p99.svg`: a bar per connection count for each
    /// contestant.
    fn charts(&self) -> Result<()> {
        use bench::charts;
        let dir = charts::dir();
        std::fs::create_dir_all(&dir)?;
        let labels: Vec<String> = self
            .levels
            .iter()
            .map(|(c, _)| format!("{c} connections"))
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let p99: Vec<(&str, Vec<f64>)> = self
            .measure(Summary::p99)
            .into_iter()
            .map(|(name, v)| (name, v.into_iter().map(|us| us / 1000.0).collect()))
            .collect();
        let written = [
            dir.join("edge-curve-cpu.svg"),
            dir.join("edge-curve-p99.svg"),
        ];
        charts::grouped(
            &written[0],
            "CPU per request by connections, pool of 1,000 tokens (median)",
            "CPU microseconds per request",
            &labels,
            &self.measure(Summary::cpu),
        )?;
        charts::grouped(
            &written[1],
            "p99 latency by connections, pool of 1,000 tokens (median)",
            "milliseconds",
            &labels,
            &p99,
        )?;
        for path in written {
            println!("chart: {}", path.display());
        }
        Ok(())
    }
}

/// The pool workload's sentence on `hyper-proxy`: how far hyper alone is from nginx, and
/// what the gateway adds to it.
fn floor_of_hyper(pool: &BTreeMap<&'static str, Summary>) -> String {
    let cpu = |name: &str| pool.get(name).map_or(0.0, Summary::cpu);
    format!(
        "\nThe floor of hyper: `hyper-proxy` runs at {:.2}× `nginx-proxy`'s requests/s with {:.1} against {:.1} µs of CPU a request; the gateway adds {:.1} µs to it ({:.2}× its requests/s).\n",
        pool.get("hyper-proxy").map_or(0.0, Summary::rps)
            / pool.get("nginx-proxy").map_or(f64::NAN, Summary::rps),
        cpu("hyper-proxy"),
        cpu("nginx-proxy"),
        cpu("gateway") - cpu("hyper-proxy"),
        pool.get("gateway").map_or(0.0, Summary::rps)
            / pool.get("hyper-proxy").map_or(f64::NAN, Summary::rps),
    )
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
