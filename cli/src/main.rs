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
        /// Folder of manifests (Broker, MqttUser, Bridge, Certificate, Secret). A symlink
        /// or a parent folder swapped atomically is followed.
        #[arg(
            long,
            short = 'c',
            env = "EDGEMQ_CONFIG",
            required_unless_present = "git",
            conflicts_with = "git"
        )]
        config: Option<PathBuf>,
        /// Follow this git repository instead of a folder (any URL git fetches). Only
        /// fast-forwards whose every new commit is signed by an allowed signer apply.
        /// Repeat for fallback remotes, tried in order at each fetch.
        #[arg(long, env = "EDGEMQ_GIT", requires = "git_allowed_signers", value_parser = no_option)]
        git: Vec<String>,
        /// Branch followed.
        #[arg(long, env = "EDGEMQ_GIT_BRANCH", default_value = "main", requires = "git", value_parser = no_option)]
        git_branch: String,
        /// Folder of manifests inside the repository (e.g. one per device).
        #[arg(long, env = "EDGEMQ_GIT_PATH", default_value = ".", requires = "git")]
        git_path: PathBuf,
        /// Time between fetches (`30s`, `5m`, `1h`; plain numbers are seconds); SIGHUP
        /// or `POST /sync` on the operations endpoint fetches at once.
        #[arg(long, env = "EDGEMQ_GIT_INTERVAL", default_value = "60s", value_parser = parse_interval, requires = "git")]
        git_interval: std::time::Duration,
        /// Allowed-signers file (OpenSSH format, as for git's
        /// gpg.ssh.allowedSignersFile): the keys whose SSH signatures are accepted.
        #[arg(long, env = "EDGEMQ_GIT_ALLOWED_SIGNERS", requires = "git")]
        git_allowed_signers: Option<PathBuf>,
        /// Private key for SSH remotes (used alone: no agent, no other identity).
        #[arg(long, env = "EDGEMQ_GIT_SSH_KEY", requires = "git")]
        git_ssh_key: Option<PathBuf>,
        /// known_hosts file for SSH remotes: the only host keys trusted (always checked).
        #[arg(long, env = "EDGEMQ_GIT_KNOWN_HOSTS", requires = "git")]
        git_known_hosts: Option<PathBuf>,
        /// File with one line `username:password` (or a token as password): HTTP basic
        /// authentication for HTTP(S) remotes, passed to git through its environment.
        #[arg(long, env = "EDGEMQ_GIT_CREDENTIALS", requires = "git")]
        git_credentials: Option<PathBuf>,
        /// Extra folder of Secret manifests, kept out of git.
        #[arg(long, env = "EDGEMQ_SECRETS")]
        secrets: Option<PathBuf>,
        /// State directory: issued certificates, retained messages, status.
        #[arg(long, env = "EDGEMQ_STATE", default_value = ".edgemq-state")]
        state: PathBuf,
        /// Address of the operations endpoint (/healthz /readyz /metrics /status; POST
        /// /sync with --git). Loopback by default.
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
    /// Run the Kubernetes controller: a pod per Broker, status, certificates.
    #[cfg(feature = "kubernetes")]
    Controller {
        /// Namespace to watch (repeat for several); default: all namespaces.
        #[arg(
            long = "namespace",
            env = "EDGEMQ_WATCH_NAMESPACES",
            value_delimiter = ','
        )]
        namespaces: Vec<String>,
        /// Image of broker pods (normally the controller's own image).
        #[arg(long, env = "EDGEMQ_BROKER_IMAGE")]
        broker_image: String,
        /// Pull policy of broker pods (Always, IfNotPresent, Never); default: the cluster's.
        #[arg(long, env = "EDGEMQ_BROKER_IMAGE_PULL_POLICY")]
        broker_image_pull_policy: Option<String>,
        /// Address of the operations endpoint (/healthz /readyz /metrics /status).
        #[arg(long, env = "EDGEMQ_HTTP", default_value = "0.0.0.0:8080")]
        http: SocketAddr,
        /// Act only while holding the Lease (run two replicas safely).
        #[arg(long, env = "EDGEMQ_LEADER_ELECTION")]
        leader_election: bool,
        /// Namespace of the Lease (normally the controller's own).
        #[arg(long, env = "EDGEMQ_LEASE_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the Lease.
        #[arg(long, env = "EDGEMQ_LEASE_NAME", default_value = "edgemq-controller")]
        lease_name: String,
        /// This replica's identity in the Lease (normally its pod name).
        #[arg(long, env = "EDGEMQ_IDENTITY")]
        identity: Option<String>,
        /// Folder whose files fleet provisioning parameters may read (`valueFrom.file`;
        /// repeat or separate with commas). Default: none. Never /var/run/secrets or /proc.
        #[arg(
            long = "fleet-file-root",
            env = "EDGEMQ_FLEET_FILE_ROOTS",
            value_delimiter = ','
        )]
        fleet_file_roots: Vec<PathBuf>,
        /// Namespace whose Certificates may use the controller's own AWS credentials
        /// when they name none (repeat or separate with commas; `*`: all). Default: none.
        #[arg(
            long = "ambient-aws-namespace",
            env = "EDGEMQ_AMBIENT_AWS_NAMESPACES",
            value_delimiter = ','
        )]
        ambient_aws_namespaces: Vec<String>,
        /// Image a Broker may name in spec.pod.image besides the controller's own (an
        /// exact reference, or a prefix ending in `*`; repeat or separate with commas).
        #[arg(
            long = "allowed-broker-image",
            env = "EDGEMQ_ALLOWED_BROKER_IMAGES",
            value_delimiter = ','
        )]
        allowed_broker_images: Vec<String>,
    },
    /// Run one Broker in its pod, reading its configuration through the Kubernetes API.
    #[cfg(feature = "kubernetes")]
    Broker {
        /// Namespace of the Broker.
        #[arg(long, env = "EDGEMQ_NAMESPACE")]
        namespace: String,
        /// Name of the Broker.
        #[arg(long, env = "EDGEMQ_BROKER")]
        broker: String,
        /// State directory: retained messages and bridge queues (the pod's volume).
        #[arg(long, env = "EDGEMQ_STATE", default_value = "/var/lib/edgemq")]
        state: PathBuf,
        /// Address of the operations endpoint (/healthz /readyz /metrics /status).
        #[arg(long, env = "EDGEMQ_HTTP", default_value = "0.0.0.0:9883")]
        http: SocketAddr,
    },
    /// `controller` and `broker` in a build without the `kubernetes` feature: says so
    /// instead of clap's "unrecognized subcommand".
    #[cfg(not(feature = "kubernetes"))]
    #[command(name = "controller", aliases = ["broker"], hide = true)]
    WithoutKubernetes {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<String>,
    },
    /// Answer ACME HTTP-01 challenges: the container of the short-lived solver Pod the
    /// controller starts for an order (`/healthz` answers its probes).
    AcmeSolver {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8089")]
        listen: SocketAddr,
        /// A challenge to answer, `TOKEN=KEY_AUTHORIZATION`; repeat for several.
        #[arg(long = "answer", required = true, value_parser = edgemq::certs::http01::parse_answer)]
        answers: Vec<(String, String)>,
    },
    /// Print the version, the git commit built, the target triple and whether the build
    /// has Kubernetes (`controller`, `broker`).
    Version,
    /// Print the CustomResourceDefinitions of every kind.
    Crds {
        /// Leave out the CEL rules (`x-kubernetes-validations`), which Kubernetes 1.20
        /// to 1.22 refuse under `kubectl apply` and server-side apply. The apiserver then
        /// checks only the schema; edgemq's own validation still reports the rest.
        #[arg(long)]
        without_cel: bool,
    },
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
    /// AWS IoT helpers for administrators.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// Turn another broker's configuration into an edgemq folder.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A Mosquitto 2.0 configuration (following include_dir, password_file, acl_file,
    /// certfile/keyfile and bridge files): a Broker, MqttUsers and Bridges in --out,
    /// their Secrets (key pairs, bridge logins) in --secrets. Everything that cannot be
    /// carried over is listed with file:line; then nothing is written unless
    /// --allow-loss is given.
    Mosquitto {
        /// The mosquitto.conf to import.
        conf: PathBuf,
        /// Config folder to write (broker.yaml, users.yaml, bridges.yaml).
        #[arg(long, short = 'o', default_value = "edgemq-config")]
        out: PathBuf,
        /// Folder for the Secrets (secrets.yaml, mode 0600); keep it out of git.
        #[arg(long, default_value = "edgemq-secrets")]
        secrets: PathBuf,
        /// Name of the Broker to make.
        #[arg(long, default_value = "mosquitto")]
        broker: String,
        /// Write the import even though some settings cannot be carried over.
        #[arg(long)]
        allow_loss: bool,
        /// Propose each certbot certificate (/etc/letsencrypt/live/NAME/) as an `acme`
        /// Certificate with the same DNS names and this contact email, as commented
        /// YAML in proposed-acme-certificates.yaml (inactive until uncommented).
        #[arg(long, value_name = "EMAIL")]
        propose_acme: Option<String>,
    },
}

#[derive(Subcommand)]
enum AwsCommand {
    /// Render what an administrator creates once for fleet provisioning by claim, from a
    /// folder's `fleetProvisioning` Certificate and the Bridges presenting it: the
    /// provisioning template, the claim policy and the device policy (JSON).
    FleetTemplate {
        /// Folder of manifests.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Extra folder of Secret manifests.
        #[arg(long)]
        secrets: Option<PathBuf>,
        /// The Certificate (`name` or `namespace/name`); default: the only
        /// `fleetProvisioning` one.
        #[arg(long)]
        certificate: Option<String>,
        /// AWS region of the account.
        #[arg(long)]
        region: String,
        /// AWS account id.
        #[arg(long)]
        account: String,
        /// The template parameter that names the thing; default: `SerialNumber` when
        /// sent, else the first parameter.
        #[arg(long)]
        thing_name_parameter: Option<String>,
        /// Text put before the parameter's value in the thing name (`edge-`).
        #[arg(long, default_value = "")]
        thing_name_prefix: String,
        /// Write template.json, claim-policy.json and device-policy.json here instead of
        /// printing one JSON object.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
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

/// A list from a flag or an environment variable, without empty entries (an empty
/// variable means none).
#[cfg(feature = "kubernetes")]
fn nonempty(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A value that git could read as an option is refused.
fn no_option(s: &str) -> Result<String, String> {
    if s.starts_with('-') || s.is_empty() {
        Err("must not be empty or start with '-'".into())
    } else {
        Ok(s.to_string())
    }
}

/// `30s`, `5m`, `1h`, or plain seconds.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s}: expected e.g. 30s, 5m, 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s}: unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the interval must be at least 1s".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// The runtime of the brokers (`run`, `broker`): one worker thread per core, so that
/// connections are served in parallel.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map(giving_back_memory)
}

/// The controller's runtime: every task on the thread that starts it. Its work waits on
/// the API server (at 100 Brokers and 1,000 MqttUsers it uses about a third of one
/// core), and glibc's malloc keeps what a burst of reconciles freed in each worker
/// thread's own arena. At that scale one thread used 8 MB less memory and a fifth less
/// CPU, and converged no slower (bench/README.md, "Controller at scale").
#[cfg(feature = "kubernetes")]
fn controller_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(giving_back_memory)
}

/// Every long-running command hands what malloc holds free after a burst back to the
/// system (`edgemq::memory`).
fn giving_back_memory(rt: tokio::runtime::Runtime) -> tokio::runtime::Runtime {
    rt.spawn(edgemq::memory::give_back(
        edgemq::memory::INTERVAL,
        edgemq::memory::THRESHOLD,
    ));
    rt
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and each cause its text does not already say: an error that writes its source
/// into its own message (most do) is not followed by that source again.
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            git,
            git_branch,
            git_path,
            git_interval,
            git_allowed_signers,
            git_ssh_key,
            git_known_hosts,
            git_credentials,
            secrets,
            state,
            http,
        } => {
            let git = git_options(
                git,
                git_branch,
                git_path,
                git_interval,
                git_allowed_signers,
                edgemq::source::git::Credentials {
                    ssh_key: git_ssh_key,
                    known_hosts: git_known_hosts,
                    http_basic: git_credentials,
                },
            )?;
            let rt = runtime()?;
            rt.block_on(edgemq::standalone::run(edgemq::standalone::RunOptions {
                config_dir: config.unwrap_or_default(),
                secrets_dir: secrets,
                state_dir: state,
                http,
                git,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "kubernetes")]
        Command::Controller {
            namespaces,
            broker_image,
            broker_image_pull_policy,
            http,
            leader_election,
            lease_namespace,
            lease_name,
            identity,
            fleet_file_roots,
            ambient_aws_namespaces,
            allowed_broker_images,
        } => {
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("edgemq-{}", std::process::id()));
            let rt = controller_runtime()?;
            rt.block_on(edgemq::kubernetes::run_controller(
                edgemq::kubernetes::ControllerOptions {
                    namespaces: nonempty(namespaces),
                    settings: edgemq::kubernetes::desired::Settings {
                        image: broker_image,
                        image_pull_policy: broker_image_pull_policy,
                        trust: edgemq::kubernetes::trust::Trust {
                            fleet_file_roots: fleet_file_roots
                                .into_iter()
                                .filter(|p| !p.as_os_str().is_empty())
                                .collect(),
                            ambient_aws_namespaces: nonempty(ambient_aws_namespaces),
                            broker_images: nonempty(allowed_broker_images),
                        },
                    },
                    http,
                    leader_election,
                    lease_namespace,
                    lease_name,
                    identity,
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "kubernetes")]
        Command::Broker {
            namespace,
            broker,
            state,
            http,
        } => {
            let rt = runtime()?;
            rt.block_on(edgemq::kubernetes::pod::run_broker(
                edgemq::kubernetes::pod::BrokerOptions {
                    namespace,
                    broker,
                    state_dir: state,
                    http,
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(not(feature = "kubernetes"))]
        Command::WithoutKubernetes { .. } => Err(anyhow::anyhow!(
            "this edgemq was built without Kubernetes (cargo feature `kubernetes`): \
             `edgemq controller` and `edgemq broker` need a build with it, such as the \
             release image; `edgemq run` is the standalone broker"
        )),
        Command::Aws(AwsCommand::FleetTemplate {
            config,
            secrets,
            certificate,
            region,
            account,
            thing_name_parameter,
            thing_name_prefix,
            out,
        }) => fleet_template(
            &config,
            secrets.as_deref(),
            certificate.as_deref(),
            &format!("arn:aws:iot:{region}:{account}"),
            &edgemq::aws::fleet_template::ThingNaming {
                parameter: thing_name_parameter,
                prefix: thing_name_prefix,
            },
            out.as_deref(),
        ),
        Command::Validate { dir, secrets } => validate(&dir, secrets.as_deref()),
        Command::Status { state, json } => status(&state, json),
        Command::AcmeSolver { listen, answers } => {
            let rt = runtime()?;
            rt.block_on(edgemq::certs::http01::serve(
                listen,
                answers.into_iter().collect(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!(
                "edgemq {}\ncommit: {}\ntarget: {}\nkubernetes: {}",
                edgemq::metrics::VERSION,
                edgemq::metrics::GIT_COMMIT,
                edgemq::metrics::TARGET,
                if cfg!(feature = "kubernetes") {
                    "yes"
                } else {
                    "no (a standalone-only build)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds { without_cel } => {
            print!(
                "{}",
                if without_cel {
                    edgemq::render::crds_yaml_without_cel()
                } else {
                    edgemq::render::crds_yaml()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Import(ImportCommand::Mosquitto {
            conf,
            out,
            secrets,
            broker,
            allow_loss,
            propose_acme,
        }) => import_mosquitto(
            &conf,
            &out,
            &secrets,
            &broker,
            allow_loss,
            propose_acme.as_deref(),
        ),
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
        } => render(&config, secrets.as_deref(), broker.as_deref(), &out, &state),
    }
}

/// `--git` and its options, checked: `None` without `--git` or without
/// `--git-allowed-signers` (clap requires them together).
fn git_options(
    git: Vec<String>,
    branch: String,
    path: PathBuf,
    interval: std::time::Duration,
    allowed_signers: Option<PathBuf>,
    credentials: edgemq::source::git::Credentials,
) -> anyhow::Result<Option<edgemq::source::follow::GitOptions>> {
    Ok(match (git.is_empty(), allowed_signers) {
        (false, Some(allowed_signers)) => {
            if path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                anyhow::bail!(
                    "--git-path {}: a folder inside the repository (relative, no ..)",
                    path.display()
                );
            }
            if credentials.http_basic.is_some() {
                if let Some(u) = git
                    .iter()
                    .find(|u| edgemq::source::git::is_plain_http_off_host(u))
                {
                    anyhow::bail!(
                        "--git {}: --git-credentials would cross the network in clear over http://; use https://",
                        edgemq::source::follow::redact(u)
                    );
                }
            }
            Some(edgemq::source::follow::GitOptions {
                urls: git,
                branch,
                path,
                interval,
                allowed_signers,
                credentials,
            })
        }
        _ => None,
    })
}

/// `edgemq validate`.
fn validate(dir: &std::path::Path, secrets: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let errors = match edgemq::standalone::load_and_plan(dir, secrets) {
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
            // The hash a running broker reports (`edgemq status`, and a Broker's
            // `status.configHash` on a cluster) once this content is applied.
            for (key, bundle) in &bundles {
                println!("  Broker {key}: config {}", bundle.hash());
            }
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

/// `edgemq status`: the table of the status file, exit 3 unless everything is ready.
fn status(state: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
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

/// `edgemq render --format mosquitto`.
fn render(
    config: &std::path::Path,
    secrets: Option<&std::path::Path>,
    broker: Option<&str>,
    out: &std::path::Path,
    state: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let (res, bundles) = edgemq::standalone::load_and_plan(config, secrets)
        .map_err(|errors| anyhow::anyhow!("{}", errors.join("\n")))?;
    let bundle = match broker {
        Some(b) => bundles
            .iter()
            .find(|(k, v)| *k == b || v.name == *b)
            .map(|(_, v)| v)
            .ok_or_else(|| anyhow::anyhow!("Broker {b} not found in {}", config.display()))?,
        None if bundles.len() == 1 => bundles.values().next().expect("one bundle"),
        None => anyhow::bail!(
            "{} brokers in the folder; choose one with --broker",
            bundles.len()
        ),
    };
    let written = edgemq::render::write::mosquitto(&res, bundle, out, state)?;
    for why in &written.not_expressed {
        eprintln!("warning: {why}");
    }
    for path in &written.files {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `edgemq import mosquitto`.
fn import_mosquitto(
    conf: &std::path::Path,
    out: &std::path::Path,
    secrets: &std::path::Path,
    broker: &str,
    allow_loss: bool,
    propose_acme: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use edgemq::import;
    let imported = import::mosquitto::import(conf, broker)?;
    for n in &imported.notes {
        println!("note: {n}");
    }
    for l in &imported.losses {
        println!("not carried over: {l}");
    }
    if !imported.losses.is_empty() && !allow_loss {
        println!(
            "{} setting(s) cannot be carried over; nothing written (--allow-loss writes the rest)",
            imported.losses.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    if propose_acme.is_some() && imported.certbot.is_empty() {
        println!("note: --propose-acme: no certbot certificate (/etc/letsencrypt/live/NAME/) in the configuration; nothing proposed");
    }
    for path in import::write::write(&imported, conf, out, secrets, propose_acme)? {
        println!("wrote {}", path.display());
    }
    println!(
        "check it with: edgemq validate {} --secrets {}",
        out.display(),
        secrets.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `edgemq aws fleet-template`.
fn fleet_template(
    config: &std::path::Path,
    secrets: Option<&std::path::Path>,
    certificate: Option<&str>,
    arn_prefix: &str,
    naming: &edgemq::aws::fleet_template::ThingNaming,
    out: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use edgemq::aws::{fleet_template, policy};
    let res = match edgemq::load::load(config, secrets) {
        Ok(r) => r,
        Err(errors) => {
            for e in errors.iter() {
                println!("{e}");
            }
            anyhow::bail!("{} is not valid", config.display());
        }
    };
    let fleet: Vec<_> = res
        .certificates()
        .filter(|c| edgemq::certs::fleet::is_fleet(&c.object))
        .collect();
    let cert = match certificate {
        Some(want) => {
            let (ns, name) = want.split_once('/').unwrap_or(("default", want));
            fleet
                .iter()
                .find(|c| c.meta.namespace == ns && c.meta.name == name)
                .ok_or_else(|| anyhow::anyhow!("no fleetProvisioning Certificate {want}"))?
        }
        None => match fleet.as_slice() {
            [one] => one,
            [] => anyhow::bail!("no Certificate uses awsIot.fleetProvisioning"),
            _ => anyhow::bail!(
                "several fleetProvisioning Certificates; choose one with --certificate"
            ),
        },
    };
    let bridges = policy::bridges_using(&cert.object, res.bridges().map(|b| &b.object));
    let r = fleet_template::render(&cert.object, &bridges, arn_prefix, naming)
        .map_err(|e| anyhow::anyhow!("Certificate {}: {e}", cert.meta.name))?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            for (file, v) in [
                ("template.json", &r.template),
                ("claim-policy.json", &r.claim_policy),
                ("device-policy.json", &r.device_policy),
            ] {
                std::fs::write(dir.join(file), pretty(v))?;
            }
            println!(
                "template {} and policies written to {}; name the device policy {}",
                r.template_name,
                dir.display(),
                r.device_policy_name
            );
        }
        None => print!(
            "{}",
            pretty(&serde_json::json!({
                "templateName": r.template_name,
                "templateBody": r.template,
                "claimPolicy": r.claim_policy,
                "devicePolicyName": r.device_policy_name,
                "devicePolicy": r.device_policy,
            }))
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::report;

    /// The arguments the controller gives an HTTP-01 solver Pod reach the solver intact,
    /// also for a token that starts with `-` (base64url allows it; one in 64 does).
    #[test]
    #[cfg(feature = "kubernetes")]
    fn the_solver_pods_arguments_parse_for_a_token_that_starts_with_a_dash() {
        use edgemq::certs::http01::Answer;
        let cert: edgemq::api::Certificate = serde_yaml::from_str(
            "apiVersion: edgemq.io/v1alpha1\nkind: Certificate\nmetadata: {name: site, namespace: ns, uid: u1}\n\
             spec:\n  dnsNames: [site.example]\n  issuer:\n    acme:\n      server: https://ca.example/dir\n      solver: {http01: {}}\n",
        )
        .unwrap();
        let answer = Answer {
            domain: "site.example".into(),
            token: "-tXTjyD-oN6Zy".into(),
            key_authorization: "-tXTjyD-oN6Zy.thumb".into(),
        };
        let settings = edgemq::kubernetes::desired::Settings {
            image: "edgemq:1".into(),
            image_pull_policy: None,
            trust: Default::default(),
        };
        let o = edgemq::kubernetes::acme::solver_objects(
            &cert,
            &answer,
            &Default::default(),
            &settings,
        );
        let args = o.pod.spec.unwrap().containers[0].args.clone().unwrap();
        let cli = <super::Cli as clap::Parser>::try_parse_from(
            std::iter::once("edgemq".to_string()).chain(args),
        )
        .unwrap_or_else(|e| panic!("the solver Pod's arguments do not parse: {e}"));
        match cli.command {
            super::Command::AcmeSolver { answers, .. } => assert_eq!(
                answers,
                vec![(
                    "-tXTjyD-oN6Zy".to_string(),
                    "-tXTjyD-oN6Zy.thumb".to_string()
                )]
            ),
            _ => panic!("not the acme-solver command"),
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Wrapped {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated_and_others_are_added() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let e = anyhow::Error::new(Wrapped {
            path: "0.0.0.0:80".into(),
            source: io(),
        });
        assert_eq!(report(&e), "0.0.0.0:80: address in use");
        let e = anyhow::Error::new(io()).context("could not serve the answers");
        assert_eq!(report(&e), "could not serve the answers: address in use");
    }
}
