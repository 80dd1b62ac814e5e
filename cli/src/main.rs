//! The `edgemq` command line.

mod args;

use std::path::PathBuf;
use std::process::ExitCode;

use args::{AwsCommand, Cli, Command, ImportCommand, LogFormat, RenderFormat};
use clap::Parser;

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
            rt.block_on(edgemq_kubernetes::run_controller(
                edgemq_kubernetes::ControllerOptions {
                    namespaces: nonempty(namespaces),
                    settings: edgemq_kubernetes::desired::Settings {
                        image: broker_image,
                        image_pull_policy: broker_image_pull_policy,
                        trust: edgemq_kubernetes::trust::Trust {
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
            rt.block_on(edgemq_kubernetes::pod::run_broker(
                edgemq_kubernetes::pod::BrokerOptions {
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
        let settings = edgemq_kubernetes::desired::Settings {
            image: "edgemq:1".into(),
            image_pull_policy: None,
            trust: Default::default(),
        };
        let o =
            edgemq_kubernetes::acme::solver_objects(&cert, &answer, &Default::default(), &settings);
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
