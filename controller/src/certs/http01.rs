//! HTTP-01: answering `GET /.well-known/acme-challenge/<token>` with the key
//! authorization while an order's challenges are pending.
//!
//! Where the answer is served depends on the mode, so the ACME issuer asks an
//! [`Http01Host`] for it: [`LocalHost`] serves it from this process on the solver's
//! port (`edgemq run`); on a cluster the controller starts a short-lived solver Pod
//! and Service (`kubernetes::acme`), whose container runs [`serve`] (`edgemq
//! acme-solver`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::CertError;
use crate::api::certificate::Http01Solver;

/// Path prefix the CA fetches.
pub const PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// One pending HTTP-01 challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The name being validated.
    pub domain: String,
    /// The challenge token (the last path segment the CA fetches).
    pub token: String,
    /// What to answer: the key authorization.
    pub key_authorization: String,
}

/// Serves the answers of one order: `present` for each challenge before the CA is
/// told to look, `cleanup` once when the order ends, whatever happened.
pub trait Http01Host: Send + Sync {
    /// Starts answering `answer`; returns once the answer can be fetched.
    fn present<'a>(&'a self, answer: &'a Answer) -> BoxFuture<'a, Result<(), CertError>>;
    /// Stops answering every challenge presented.
    fn cleanup(&self) -> BoxFuture<'_, ()>;
}

/// Token → key authorization, shared with the serving task.
type Answers = Arc<Mutex<HashMap<String, String>>>;

/// The HTTP service: the answers under [`PATH_PREFIX`], `/healthz` for probes.
fn app(answers: Answers) -> axum::Router {
    axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                move |axum::extract::Path(token): axum::extract::Path<String>| {
                    let answers = answers.clone();
                    async move {
                        let answer = answers.lock().ok().and_then(|t| t.get(&token).cloned());
                        answer.ok_or(axum::http::StatusCode::NOT_FOUND)
                    }
                },
            ),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
}

/// The HTTP-01 challenge server could not listen (an ACME issuer's error, see
/// [`super::acme::Error::ChallengeServer`]).
#[derive(Debug, thiserror::Error)]
#[error("HTTP-01 challenge server on {addr}: {source}")]
pub struct BindError {
    /// The address tried last.
    pub addr: SocketAddr,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Binds the first of `ips` that works on `port`.
async fn bind(ips: &[IpAddr], port: u16) -> Result<tokio::net::TcpListener, BindError> {
    let mut last = None;
    for ip in ips {
        match tokio::net::TcpListener::bind(SocketAddr::new(*ip, port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((*ip, e)),
        }
    }
    let (ip, e) = last.expect("at least one address is tried");
    Err(BindError {
        addr: SocketAddr::new(ip, port),
        source: e,
    })
}

/// A challenge server of this process; stops when dropped.
struct Server {
    answers: Answers,
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl Server {
    async fn start(ips: &[IpAddr], port: u16, answers: Answers) -> Result<Server, CertError> {
        let listener = bind(ips, port).await?;
        let addr = listener.local_addr().map_err(|e| CertError::Io {
            path: "HTTP-01 listener".into(),
            source: e,
        })?;
        let service = app(answers.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, service).await {
                tracing::warn!(error = %e, "HTTP-01 challenge server stopped");
            }
        });
        tracing::info!(%addr, "HTTP-01 challenge server listening");
        Ok(Server {
            answers,
            task,
            addr,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        tracing::info!(addr = %self.addr, "HTTP-01 challenge server stopped");
    }
}

/// One HTTP-01 challenge server per process at a time: orders that need it take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serves the answers from this process on the solver's port (default 80) and bind
/// address (default every interface).
pub struct LocalHost {
    solver: Http01Solver,
    running: tokio::sync::Mutex<Option<(Server, tokio::sync::MutexGuard<'static, ()>)>>,
}

impl LocalHost {
    /// A host for one order.
    pub fn new(solver: &Http01Solver) -> LocalHost {
        LocalHost {
            solver: solver.clone(),
            running: tokio::sync::Mutex::new(None),
        }
    }

    fn addresses(&self) -> Result<Vec<IpAddr>, CertError> {
        match &self.solver.bind_address {
            Some(a) => Ok(vec![a.parse().map_err(|_| {
                CertError::Invalid(format!("http01 bindAddress `{a}` is not an IP address"))
            })?]),
            None => Ok(vec![
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ]),
        }
    }
}

impl Http01Host for LocalHost {
    fn present<'a>(&'a self, answer: &'a Answer) -> BoxFuture<'a, Result<(), CertError>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            if running.is_none() {
                let turn = TURN.lock().await;
                let port = self.solver.port.unwrap_or(80);
                let server = Server::start(&self.addresses()?, port, Answers::default()).await?;
                *running = Some((server, turn));
            }
            let (server, _) = running.as_ref().expect("started above");
            if let Ok(mut t) = server.answers.lock() {
                t.insert(answer.token.clone(), answer.key_authorization.clone());
            }
            Ok(())
        })
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.running.lock().await.take();
        })
    }
}

/// A solver argument that is not `TOKEN=KEY_AUTHORIZATION` (as given).
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not TOKEN=KEY_AUTHORIZATION")]
pub struct NotAnAnswer(pub String);

/// Parses `TOKEN=KEY_AUTHORIZATION` (the solver container's arguments).
pub fn parse_answer(arg: &str) -> Result<(String, String), NotAnAnswer> {
    match arg.split_once('=') {
        Some((t, ka)) if !t.is_empty() && !ka.is_empty() && !t.contains('/') => {
            Ok((t.to_string(), ka.to_string()))
        }
        _ => Err(NotAnAnswer(arg.to_string())),
    }
}

/// `edgemq acme-solver`: serves `answers` (token → key authorization) on `addr`
/// until SIGTERM or Ctrl-C.
pub async fn serve(addr: SocketAddr, answers: HashMap<String, String>) -> Result<(), CertError> {
    let n = answers.len();
    let server = Server::start(&[addr.ip()], addr.port(), Arc::new(Mutex::new(answers))).await?;
    tracing::info!(addr = %server.addr, challenges = n, "answering HTTP-01 challenges");
    crate::process::shutdown_signal().await;
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solver_argument_is_a_token_and_its_key_authorization() {
        assert_eq!(
            parse_answer("tok=tok.thumb").unwrap(),
            ("tok".to_string(), "tok.thumb".to_string())
        );
        for bad in ["tok", "=x", "tok=", "a/b=c"] {
            let e = parse_answer(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("`{bad}` is not TOKEN=KEY_AUTHORIZATION")
            );
        }
    }

    #[tokio::test]
    async fn the_local_host_answers_each_presented_token_until_cleanup() {
        let solver = Http01Solver {
            port: Some(0),
            bind_address: Some("127.0.0.1".into()),
            ..Default::default()
        };
        let host = LocalHost::new(&solver);
        let a = Answer {
            domain: "a.example".into(),
            token: "t1".into(),
            key_authorization: "t1.k".into(),
        };
        host.present(&a).await.unwrap();
        let addr = host.running.lock().await.as_ref().unwrap().0.addr;
        let get = |path: String| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: a.example\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get(format!("{PATH_PREFIX}t1")).await;
        assert!(
            ok.starts_with("HTTP/1.0 200") && ok.ends_with("t1.k"),
            "{ok}"
        );
        assert!(get(format!("{PATH_PREFIX}other")).await.contains(" 404 "));
        host.cleanup().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_challenge_server_error_naming_the_address() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(&[addr.ip()], addr.port()).await.unwrap_err();
        assert_eq!(e.addr, addr);
        assert_eq!(e.source.kind(), std::io::ErrorKind::AddrInUse);
        let e = CertError::from(e);
        assert!(
            matches!(
                &e,
                CertError::Issuer(crate::certs::acme::Error::ChallengeServer(b)) if b.addr == addr
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("ACME: HTTP-01 challenge server on {addr}: ")),
            "{e}"
        );
    }
}
