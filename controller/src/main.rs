//! The `edgemq` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Secure MQTT brokers on edge machines from declarative YAML.
#[derive(Parser)]
#[command(name = "edgemq", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EDGEMQ_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the brokers of a folder of YAML and apply every later edit live.
    Run {
        /// Folder of manifests (Broker, MqttUser, Bridge, Certificate, Secret).
        #[arg(long, short = 'c', env = "EDGEMQ_CONFIG")]
        config: PathBuf,
        /// Extra folder of Secret manifests, kept out of git.
        #[arg(long, env = "EDGEMQ_SECRETS")]
        secrets: Option<PathBuf>,
        /// State directory: issued certificates, retained messages, status.
        #[arg(long, env = "EDGEMQ_STATE", default_value = ".edgemq-state")]
        state: PathBuf,
        /// Address of the operations endpoint (/healthz /readyz /metrics /status).
        #[arg(long, env = "EDGEMQ_HTTP", default_value = "127.0.0.1:9883")]
        http: SocketAddr,
    },
    /// Check a folder; print every error with file:line; exit non-zero if any.
    Validate {
        /// Folder of manifests.
        dir: PathBuf,
        /// Extra folder of Secret manifests.
        #[arg(long)]
        secrets: Option<PathBuf>,
    },
    /// Show each resource's Ready condition, from a running `edgemq run`.
    Status {
        /// State directory of the running `edgemq run`.
        #[arg(long, env = "EDGEMQ_STATE", default_value = ".edgemq-state")]
        state: PathBuf,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Print the CustomResourceDefinitions of every kind.
    Crds,
    /// Manage a Mosquitto-compatible password file (like mosquitto_passwd).
    Passwd(edgemq::auth::passwd_cmd::PasswdArgs),
    /// Write the equivalent Mosquitto configuration of a Broker.
    Render {
        /// Folder of manifests.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Extra folder of Secret manifests.
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// Broker name (`name` or `namespace/name`); default: the only one.
        #[arg(long)]
        broker: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = RenderFormat::Mosquitto)]
        format: RenderFormat,
        /// Directory to write mosquitto.conf, passwd and acl into.
        #[arg(long, short = 'o')]
        out: PathBuf,
        /// State directory of `edgemq run`, where issued certificates are kept.
        #[arg(long, env = "EDGEMQ_STATE", default_value = ".edgemq-state")]
        state: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RenderFormat {
    Mosquitto,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEMQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            secrets,
            state,
            http,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(edgemq::standalone::run(edgemq::standalone::RunOptions {
                config_dir: config,
                secrets_dir: secrets,
                state_dir: state,
                http,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { dir, secrets } => {
            let errors = match edgemq::standalone::load_and_plan(&dir, secrets.as_deref()) {
                Ok((res, bundles)) => {
                    let warnings = edgemq::load::warnings(&res);
                    for w in &warnings {
                        println!("warning: {w}");
                    }
                    println!(
                        "{}: valid ({} broker(s), {} warning(s))",
                        dir.display(),
                        bundles.len(),
                        warnings.len()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                Err(errors) => errors,
            };
            for e in &errors {
                println!("{e}");
            }
            println!("{} error(s)", errors.len());
            Ok(ExitCode::FAILURE)
        }
        Command::Status { state, json } => {
            let path = state.join(edgemq::standalone::STATUS_FILE);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (is `edgemq run` running with --state {}?)",
                    path.display(),
                    state.display()
                )
            })?;
            if json {
                println!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            let report: edgemq::status::StatusReport = serde_json::from_str(&text)?;
            print!("{}", report.table());
            let all_ready = report.config.valid
                && report
                    .resources
                    .iter()
                    .all(|r| r.ready().is_some_and(|c| c.status == "True") || r.kind == "Bridge");
            Ok(if all_ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Crds => {
            print!("{}", edgemq::render::crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Passwd(args) => {
            edgemq::auth::passwd_cmd::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Render {
            config,
            secrets,
            broker,
            format: RenderFormat::Mosquitto,
            out,
            state,
        } => {
            let (res, bundles) = edgemq::standalone::load_and_plan(&config, secrets.as_deref())
                .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n")))?;
            let bundle = match &broker {
                Some(b) => bundles
                    .iter()
                    .find(|(k, v)| *k == b || v.name == *b)
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        anyhow::anyhow!("Broker {b} not found in {}", config.display())
                    })?,
                None if bundles.len() == 1 => bundles.values().next().expect("one bundle"),
                None => anyhow::bail!(
                    "{} brokers in the folder; choose one with --broker",
                    bundles.len()
                ),
            };
            render_mosquitto(&res, bundle, &out, &state)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes mosquitto.conf, passwd and acl for `bundle` into `out`. Key pairs from
/// Secrets are written under `out/tls/`; issued Certificates are referenced where
/// `edgemq run` keeps them in the state directory.
fn render_mosquitto(
    res: &edgemq::load::Resources,
    bundle: &edgemq::plan::BrokerBundle,
    out: &std::path::Path,
    state: &std::path::Path,
) -> anyhow::Result<()> {
    use edgemq::plan::TlsSource;
    use edgemq::render::mosquitto::{render, MosquittoPaths, TlsFiles};
    std::fs::create_dir_all(out)?;
    let out = std::fs::canonicalize(out)?;
    let mut paths = MosquittoPaths {
        config_dir: out.clone(),
        persistence_dir: out.join("data"),
        ..MosquittoPaths::default()
    };
    for l in &bundle.listeners {
        let Some(src) = &l.tls else { continue };
        let files = match src {
            TlsSource::Secret(name) => {
                let dir = out.join("tls").join(format!("secret-{name}"));
                for key in ["tls.crt", "tls.key"] {
                    let value = res
                        .secret_value(&bundle.namespace, name, key)
                        .ok_or_else(|| anyhow::anyhow!("Secret {name} has no key {key}"))?;
                    edgemq::certs::write_private(&dir.join(key), &value)?;
                }
                TlsFiles {
                    certfile: dir.join("tls.crt"),
                    keyfile: dir.join("tls.key"),
                }
            }
            TlsSource::Certificate(name) => {
                let cert = res
                    .certificate(&bundle.namespace, name)
                    .ok_or_else(|| anyhow::anyhow!("Certificate {name} not found"))?;
                let dir = std::path::absolute(edgemq::certs::cert_dir(state, cert))?;
                TlsFiles {
                    certfile: dir.join("tls.crt"),
                    keyfile: dir.join("tls.key"),
                }
            }
        };
        paths.tls.insert(src.clone(), files);
    }
    let files = render(bundle, &paths);
    for (name, text) in [
        ("mosquitto.conf", &files.conf),
        ("passwd", &files.passwd),
        ("acl", &files.acl),
    ] {
        let path = out.join(name);
        if name == "mosquitto.conf" {
            std::fs::write(&path, text)?;
        } else {
            edgemq::certs::write_private(&path, text.as_bytes())?;
        }
        println!("wrote {}", path.display());
    }
    Ok(())
}
