//! The command line's arguments: every command and flag, with its help text and
//! environment variable, and the parsers of its values. What each command does is in
//! `main.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Secure MQTT brokers on edge machines from declarative YAML.
#[derive(Parser)]
#[command(name = "edgemq", version, about)]
pub(crate) struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "EDGEMQ_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum ImportCommand {
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
pub(crate) enum AwsCommand {
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
pub(crate) enum RenderFormat {
    Mosquitto,
}

/// A value that git could read as an option is refused.
pub(crate) fn no_option(s: &str) -> Result<String, String> {
    if s.starts_with('-') || s.is_empty() {
        Err("must not be empty or start with '-'".into())
    } else {
        Ok(s.to_string())
    }
}

/// `30s`, `5m`, `1h`, or plain seconds.
pub(crate) fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
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
