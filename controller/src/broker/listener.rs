//! Listeners: accept loops for TCP, TLS, WebSocket and secure WebSocket.
//!
//! The accept loop only accepts; every handshake (TLS, WebSocket upgrade, CONNECT)
//! runs in the connection's own task under the handshake timeout, so one stalled
//! client never blocks new connections. The TLS configuration sits behind an
//! `ArcSwap`: a replaced certificate is served to new handshakes at once while
//! established connections carry on.
//!
//! A listener is bound first and accepts only once [`ListenerHandle::open`] is
//! called: the broker opens its listeners after its state (persistent sessions,
//! retained messages) is in place, so a client reconnecting during a restart waits in
//! the kernel's backlog instead of getting an empty session that the restored one
//! then replaces.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::client_cert::{self, ClientCertPolicy, PeerCertificate};
use super::transport::{BoxIo, Transport};
use super::Shared;
use super::{connection, slots};
use crate::api::broker::ListenerProtocol;
use crate::plan::ListenerPlan;

/// What a TLS listener serves to new handshakes.
#[derive(Debug)]
pub struct TlsServing {
    /// The rustls configuration (key pair; client verifier with `clientAuth`).
    pub config: Arc<rustls::ServerConfig>,
    /// With `clientAuth`: how client certificates are checked and mapped.
    pub client: Option<Arc<ClientCertPolicy>>,
}

/// A running listener.
pub struct ListenerHandle {
    /// What it was started from.
    pub plan: ListenerPlan,
    /// The address it is bound to.
    pub local_addr: SocketAddr,
    /// The TLS configuration served to new handshakes.
    pub tls: Option<Arc<ArcSwap<TlsServing>>>,
    stop: watch::Sender<bool>,
    open: watch::Sender<bool>,
}

impl ListenerHandle {
    /// Starts accepting connections (those that arrived since the bind were queued).
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Stops accepting (the socket closes, so new connections are refused at once)
    /// and leaves the connections accepted here running: the first step of a stop
    /// that tells clients to go ([`super::BrokerRuntime::drain`]).
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Stops accepting and closes the connections accepted here.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Binds a listener and starts its accept loop, which accepts once the handle is
/// opened ([`ListenerHandle::open`]).
pub async fn start(
    plan: ListenerPlan,
    tls: Option<Arc<TlsServing>>,
    shared: Arc<Shared>,
) -> std::io::Result<ListenerHandle> {
    let socket = TcpListener::bind(&plan.bind).await?;
    let local_addr = socket.local_addr()?;
    let tls = tls.map(|c| Arc::new(ArcSwap::new(c)));
    let (stop, stop_rx) = watch::channel(false);
    let (open, open_rx) = watch::channel(false);
    let name: Arc<str> = plan.name.as_str().into();
    tokio::spawn(accept_loop(
        socket,
        plan.protocol,
        tls.clone(),
        shared,
        name.clone(),
        stop_rx,
        open_rx,
    ));
    tracing::info!(listener = %name, address = %local_addr, protocol = ?plan.protocol, tls = tls.is_some(), "listening");
    Ok(ListenerHandle {
        plan,
        local_addr,
        tls,
        stop,
        open,
    })
}

async fn accept_loop(
    socket: TcpListener,
    protocol: ListenerProtocol,
    tls: Option<Arc<ArcSwap<TlsServing>>>,
    shared: Arc<Shared>,
    name: Arc<str>,
    mut stop: watch::Receiver<bool>,
    mut open: watch::Receiver<bool>,
) {
    // A dropped handle counts as a stop.
    let opened = tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        o = open.wait_for(|o| *o) => o.is_ok(),
    };
    if !opened {
        tracing::info!(listener = %name, "listener stopped before it opened");
        return;
    }
    // Sockets refused for want of a slot: logged at powers of two, all counted.
    let mut refused = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            _ = open.wait_for(|o| !*o) => break,
            a = socket.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly, keep serving.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match slots::handshake(&shared, peer.ip()) {
            Ok(slot) => slot,
            Err(e) => {
                refused += 1;
                if refused.is_power_of_two() || refused % 10_000 == 0 {
                    tracing::warn!(listener = %name, %peer, refused, "connection refused: {e} (counted in edgemq_limit_refusals_total)");
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.as_ref().map(|t| t.load_full());
        let shared = shared.clone();
        let name = name.clone();
        let stop = stop.clone();
        tokio::spawn(serve_socket(
            stream, peer, protocol, tls, shared, name, stop, slot,
        ));
    }
    tracing::info!(listener = %name, "listener stopped");
}

/// Serves one accepted socket. `handshakeTimeoutSeconds` runs from the accept and
/// covers the TLS or WebSocket handshake and the CONNECT together.
#[allow(clippy::too_many_arguments)]
async fn serve_socket(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: ListenerProtocol,
    tls: Option<Arc<TlsServing>>,
    shared: Arc<Shared>,
    listener: Arc<str>,
    mut stop: watch::Receiver<bool>,
    slot: slots::HandshakeSlot,
) {
    let timeout = Duration::from_secs(shared.limits.load().handshake_timeout_seconds.into());
    let deadline = tokio::time::Instant::now() + timeout;
    let handshake = async {
        if tls.is_none() && matches!(protocol, ListenerProtocol::Mqtt) {
            return Ok((Transport::Tcp(stream), None));
        }
        let mut certificate = None;
        let io: BoxIo = match tls {
            Some(serving) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(serving.config.clone());
                let stream = match acceptor.accept(stream).await {
                    Ok(s) => s,
                    Err(e) => {
                        // A refused client certificate: counted and logged by reason.
                        if let Some(reason) = client_cert::handshake_refusal(&e) {
                            shared.metrics.certificate_refused(reason);
                            tracing::info!(%listener, %peer, reason,
                                "TLS handshake refused: client certificate not accepted");
                        }
                        return Err(format!("TLS handshake failed: {e}"));
                    }
                };
                if let (Some(policy), Some(chain)) =
                    (&serving.client, stream.get_ref().1.peer_certificates())
                {
                    let chain: Vec<_> = chain.iter().map(|c| c.clone().into_owned()).collect();
                    let identity = chain
                        .first()
                        .ok_or("no certificate")
                        .and_then(|c| client_cert::identity(c, policy.plan.identity));
                    certificate = Some(PeerCertificate {
                        chain: Arc::new(chain),
                        identity,
                        policy: policy.clone(),
                    });
                }
                Box::new(stream)
            }
            None => Box::new(stream),
        };
        let transport = match protocol {
            ListenerProtocol::Mqtt => Transport::Stream(io),
            ListenerProtocol::Websockets => {
                let max = shared.max_packet_size();
                let mut config = WebSocketConfig::default();
                config.max_message_size = Some(max);
                config.max_frame_size = Some(max);
                let ws = tokio_tungstenite::accept_hdr_async_with_config(
                    io,
                    select_mqtt_subprotocol,
                    Some(config),
                )
                .await
                .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
                Transport::WebSocket(Box::new(ws))
            }
        };
        Ok::<_, String>((transport, certificate))
    };
    let handshake = tokio::time::timeout_at(deadline, handshake);
    let (transport, certificate) = match tokio::select! {
        r = handshake => r,
        _ = stop.wait_for(|s| *s) => return,
    } {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::info!(%listener, %peer, error = %e, "connection closed during handshake");
            return;
        }
        Err(_) => {
            shared.metrics.refused.handshake_timeout.inc();
            tracing::info!(%listener, %peer, "handshake timed out");
            return;
        }
    };
    let handshake = connection::Handshake {
        slot,
        deadline,
        certificate,
    };
    connection::serve(
        transport,
        shared,
        listener,
        peer.to_string(),
        stop,
        handshake,
    )
    .await;
}

/// Answers the WebSocket upgrade with the `mqtt` subprotocol when the client offers
/// it (MQTT.js and browsers require the answer).
#[allow(clippy::result_large_err)]
fn select_mqtt_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"));
    if let Some(p) = offered {
        if let Ok(v) = HeaderValue::from_str(p) {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
        }
    }
    Ok(resp)
}
