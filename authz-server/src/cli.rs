//! The subcommands other than serving: `hash-secret`, done here, and the admin API client
//! (`revoke`, `rotate-key`, `clients ...`), one request to a running server's admin listener
//! whose answer is printed.

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;

// Parsed once at start-up; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Reads a client secret on standard input and prints its Argon2id hash for the config.
    HashSecret,
    /// Revokes against a running server through its admin API; prints the stored rule.
    Revoke(RevokeArgs),
    /// Rotates the signing key of a running server through its admin API: the new key is
    /// published at once and signs after `key_publish_delay_s`.
    RotateKey(AdminArgs),
    /// Manages the clients registered in the database of a running server.
    Clients {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: ClientAction,
    },
}

#[derive(Subcommand)]
pub enum ClientAction {
    /// Registers a client; prints its secret, which is shown this once.
    Add {
        /// The client id.
        id: String,
        /// A scope it may request (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An audience its tokens may carry (repeat; the first is the default).
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// May use the admin API.
        #[arg(long)]
        admin: bool,
    },
    /// Lists every client (without secrets).
    List,
    /// Removes a client and revokes every token it was issued.
    Remove { id: String },
    /// Gives a client a new secret, printed this once; the old one stops working.
    RotateSecret {
        id: String,
        /// Also revoke every token issued so far (the old secret leaked).
        #[arg(long)]
        revoke_tokens: bool,
    },
}

/// How to reach a running server's admin API.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// Base URL of the authz-server's admin listener (`admin_listen`).
    #[arg(long, env = "AUTHZ_ADMIN_URL", default_value = "http://127.0.0.1:9091")]
    url: String,
    /// Admin client id.
    #[arg(long, env = "AUTHZ_ADMIN_CLIENT", default_value = "admin")]
    admin_client: String,
    /// Admin client secret (better given in the environment than on the command line).
    #[arg(long, env = "AUTHZ_ADMIN_SECRET", hide_env_values = true)]
    admin_secret: String,
}

/// What to revoke: exactly one of --jti (with --exp), --token, --subject, --client or
/// --session; of --issuer's tokens (this server's by default).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "token", "subject", "client", "session"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The issuer whose tokens are meant: this server's (the default) or one of its
    /// configured [[issuers]].
    #[arg(long)]
    issuer: Option<String>,
    /// One token by its jti (needs --exp).
    #[arg(long, requires = "exp")]
    jti: Option<String>,
    /// The token's exp (Unix seconds), with --jti.
    #[arg(long)]
    exp: Option<u64>,
    /// One token, given whole.
    #[arg(long)]
    token: Option<String>,
    /// Every token of this subject issued before --before.
    #[arg(long)]
    subject: Option<String>,
    /// Every token of this client issued before --before.
    #[arg(long)]
    client: Option<String>,
    /// Every token of this OpenID session (the tokens' `sid`) issued before --before.
    #[arg(long)]
    session: Option<String>,
    /// Cut-off for --subject/--client/--session (Unix seconds); default: now.
    #[arg(long)]
    before: Option<u64>,
    /// Why; kept with the revocation and shown in the listing.
    #[arg(long)]
    reason: Option<String>,
    /// Wait until every live gateway that may accept tokens has applied the revocation, and
    /// print its receipt; exits 3 if some have not within --timeout-ms.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in milliseconds (1 to 60000).
    #[arg(long, default_value_t = 10_000, requires = "wait")]
    timeout_ms: u64,
}

/// `authz-server revoke ...`: one admin API call.
fn revoke(args: RevokeArgs) -> ExitCode {
    // Only the options given; the server tells which combinations it takes.
    let fields: [(&str, Option<serde_json::Value>); 9] = [
        ("iss", args.issuer.map(Into::into)),
        ("jti", args.jti.map(Into::into)),
        ("exp", args.exp.map(Into::into)),
        ("token", args.token.map(Into::into)),
        ("subject", args.subject.map(Into::into)),
        ("client_id", args.client.map(Into::into)),
        ("session", args.session.map(Into::into)),
        ("before", args.before.map(Into::into)),
        ("reason", args.reason.map(Into::into)),
    ];
    let body: serde_json::Map<String, serde_json::Value> = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
    if !args.wait {
        return admin_call(&args.admin, "/admin/revocations", &body.into());
    }
    let path = format!(
        "/admin/revocations?wait=enforced&timeout_ms={}",
        args.timeout_ms
    );
    admin_request_status(
        &args.admin,
        reqwest::Method::POST,
        &path,
        Some(&body.into()),
        |status| {
            // 202: committed and published, but not applied everywhere in time.
            if status == reqwest::StatusCode::ACCEPTED {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        },
    )
}

/// One POST to the admin API; prints the answer.
fn admin_call(admin: &AdminArgs, path: &str, body: &serde_json::Value) -> ExitCode {
    admin_request(admin, reqwest::Method::POST, path, Some(body))
}

/// One request to the admin API; prints the answer.
fn admin_request(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> ExitCode {
    admin_request_status(admin, method, path, body, |_| ExitCode::SUCCESS)
}

/// [`admin_request`], whose exit status on success is `on_success` of the answer's status.
fn admin_request_status(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    on_success: impl FnOnce(reqwest::StatusCode) -> ExitCode,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("{}{path}", admin.url.trim_end_matches('/'));
    let result = runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .request(method, &url)
            .basic_auth(&admin.admin_client, Some(&admin.admin_secret));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    });
    match result {
        Ok((status, text)) if status.is_success() => {
            println!("{text}");
            on_success(status)
        }
        Ok((status, text)) => {
            eprintln!("error: the server answered {status}: {text}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: cannot reach {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command`; its exit status.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::HashSecret => hash_secret(),
        Command::Revoke(args) => revoke(args),
        Command::RotateKey(admin) => {
            admin_call(&admin, "/admin/keys/rotate", &serde_json::json!({}))
        }
        Command::Clients { admin, action } => clients(&admin, action),
    }
}

/// `authz-server hash-secret`: reads a secret on standard input, prints its hash.
fn hash_secret() -> ExitCode {
    let mut secret = String::new();
    if std::io::stdin().read_to_string(&mut secret).is_err() {
        eprintln!("error: could not read the secret from standard input");
        return ExitCode::FAILURE;
    }
    match authz_server::clients::hash_secret(secret.trim_end_matches(['\r', '\n'])) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `authz-server clients ...`: one admin API call.
fn clients(admin: &AdminArgs, action: ClientAction) -> ExitCode {
    use reqwest::Method;
    match action {
        ClientAction::Add {
            id,
            scopes,
            audiences,
            admin: is_admin,
        } => {
            let body = serde_json::json!({"id": id, "scopes": scopes, "audiences": audiences, "admin": is_admin});
            admin_request(admin, Method::POST, "/admin/clients", Some(&body))
        }
        ClientAction::List => admin_request(admin, Method::GET, "/admin/clients", None),
        ClientAction::Remove { id } => {
            admin_request(admin, Method::DELETE, &format!("/admin/clients/{id}"), None)
        }
        ClientAction::RotateSecret { id, revoke_tokens } => admin_request(
            admin,
            Method::POST,
            &format!("/admin/clients/{id}/secret?revoke_tokens={revoke_tokens}"),
            None,
        ),
    }
}
