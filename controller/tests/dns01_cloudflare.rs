//! The Cloudflare provider against a local server that holds zones and DNS records
//! and accepts only requests shaped as Cloudflare's v4 API documents them
//! (`Authorization: Bearer`, `GET /zones?name=`, `POST /zones/{id}/dns_records` with
//! a JSON record, `GET /zones/{id}/dns_records?type=TXT&name=`,
//! `DELETE /zones/{id}/dns_records/{record id}`), answering with its envelope.

mod peers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Value};

use edgemq::api::certificate::{CloudflareProvider, Dns01Solver};
use edgemq::api::SecretKeyRef;
use edgemq::certs::dns01::{cloudflare, Dns01, Error};
use peers::secrets;

const TOKEN: &str = "cf-test-token-0123456789";
const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

#[derive(Clone, Debug, PartialEq)]
struct Record {
    id: String,
    zone: String,
    name: String,
    content: String,
    ttl: u64,
}

#[derive(Default)]
struct Cf {
    zones: Vec<(String, String)>,
    records: Vec<Record>,
    next: u64,
    /// Method and path (with query) of every request.
    log: Vec<String>,
}

type Shared = Arc<Mutex<Cf>>;

fn envelope(status: StatusCode, result: Value) -> Response {
    (
        status,
        Json(json!({"success": true, "errors": [], "messages": [], "result": result})),
    )
        .into_response()
}

fn failure(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null})),
    )
        .into_response()
}

/// Cloudflare answers a missing or wrong token with 403 and code 10000.
fn unauthorized(h: &HeaderMap) -> Option<Response> {
    match h.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == format!("Bearer {TOKEN}") => None,
        _ => Some(failure(
            StatusCode::FORBIDDEN,
            10000,
            "Authentication error",
        )),
    }
}

fn record_json(r: &Record) -> Value {
    json!({"id": r.id, "zone_id": r.zone, "type": "TXT", "name": r.name, "content": r.content, "ttl": r.ttl, "proxied": false})
}

async fn list_zones(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = s.lock().unwrap();
    s.log.push(format!(
        "GET /zones?name={}",
        q.get("name").cloned().unwrap_or_default()
    ));
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    let Some(name) = q.get("name") else {
        return failure(
            StatusCode::BAD_REQUEST,
            1001,
            "name filter expected by this test",
        );
    };
    let zones: Vec<Value> = s
        .zones
        .iter()
        .filter(|(_, n)| n == name)
        .map(|(id, n)| json!({"id": id, "name": n, "status": "active"}))
        .collect();
    envelope(StatusCode::OK, Value::Array(zones))
}

async fn create_record(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(zone): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut s = s.lock().unwrap();
    s.log.push(format!("POST /zones/{zone}/dns_records"));
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    if h.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return failure(
            StatusCode::BAD_REQUEST,
            6003,
            "Invalid request headers: Content-Type",
        );
    }
    let Some((_, zone_name)) = s.zones.iter().find(|(id, _)| *id == zone).cloned() else {
        return failure(
            StatusCode::NOT_FOUND,
            7003,
            "Could not route to /zones, perhaps your object identifier is invalid?",
        );
    };
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return failure(StatusCode::BAD_REQUEST, 9207, "Request body is invalid.");
    };
    if b["type"] != "TXT" {
        return failure(
            StatusCode::BAD_REQUEST,
            9004,
            "This record type is not supported by this test.",
        );
    }
    let (Some(name), Some(content)) = (b["name"].as_str(), b["content"].as_str()) else {
        return failure(
            StatusCode::BAD_REQUEST,
            9005,
            "name and content are required",
        );
    };
    // TTL 1 is "automatic"; otherwise at least 60 seconds.
    let ttl = b["ttl"].as_u64().unwrap_or(1);
    if ttl != 1 && !(60..=86400).contains(&ttl) {
        return failure(
            StatusCode::BAD_REQUEST,
            9021,
            "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.",
        );
    }
    if !(name == zone_name || name.ends_with(&format!(".{zone_name}"))) {
        return failure(
            StatusCode::BAD_REQUEST,
            9005,
            "Content for the record name is outside the zone.",
        );
    }
    if s.records
        .iter()
        .any(|r| r.zone == zone && r.name == name && r.content == content)
    {
        return failure(
            StatusCode::BAD_REQUEST,
            81058,
            "An identical record already exists.",
        );
    }
    s.next += 1;
    let r = Record {
        id: format!("rec{:030}", s.next),
        zone: zone.clone(),
        name: name.into(),
        content: content.into(),
        ttl,
    };
    s.records.push(r.clone());
    envelope(StatusCode::OK, record_json(&r))
}

async fn list_records(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(zone): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = s.lock().unwrap();
    let mut keys: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    s.log
        .push(format!("GET /zones/{zone}/dns_records?{}", keys.join("&")));
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    let rs: Vec<Value> = s
        .records
        .iter()
        .filter(|r| r.zone == zone)
        .filter(|_| q.get("type").is_none_or(|t| t == "TXT"))
        .filter(|r| q.get("name").is_none_or(|n| *n == r.name))
        .map(record_json)
        .collect();
    envelope(StatusCode::OK, Value::Array(rs))
}

async fn delete_record(
    State(s): State<Shared>,
    h: HeaderMap,
    Path((zone, id)): Path<(String, String)>,
) -> Response {
    let mut s = s.lock().unwrap();
    s.log.push(format!("DELETE /zones/{zone}/dns_records/{id}"));
    if let Some(r) = unauthorized(&h) {
        return r;
    }
    let before = s.records.len();
    s.records.retain(|r| !(r.zone == zone && r.id == id));
    if s.records.len() == before {
        return failure(StatusCode::NOT_FOUND, 81044, "Record does not exist.");
    }
    envelope(StatusCode::OK, json!({"id": id}))
}

/// Starts the server; returns its API base URL and state.
async fn serve() -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Cf {
        zones: vec![
            (ZONE_ID.into(), "example.test".into()),
            ("99aa".into(), "other.test".into()),
        ],
        ..Default::default()
    }));
    let app = Router::new()
        .route("/client/v4/zones", get(list_zones))
        .route(
            "/client/v4/zones/{zone}/dns_records",
            get(list_records).post(create_record),
        )
        .route(
            "/client/v4/zones/{zone}/dns_records/{id}",
            delete(delete_record),
        )
        .with_state(state.clone());
    (api_url(app).await, state)
}

/// Serves `app` on a free loopback port; returns the API base URL pointing at it.
async fn api_url(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/client/v4")
}

fn cloudflare(api: &str, token: &str, zone_id: Option<&str>) -> Dns01 {
    let solver = Dns01Solver {
        cloudflare: Some(CloudflareProvider {
            api_token_secret_ref: SecretKeyRef {
                name: "cloudflare".into(),
                key: "api-token".into(),
            },
            zone_id: zone_id.map(str::to_string),
            api_url: Some(api.into()),
        }),
        ..Default::default()
    };
    // A token file usually ends with a newline.
    let token = format!("{token}\n");
    Dns01::new(&solver, &secrets(&[("cloudflare", "api-token", &token)])).unwrap()
}

fn txt(s: &Shared) -> Vec<(String, String)> {
    let mut v: Vec<_> = s
        .lock()
        .unwrap()
        .records
        .iter()
        .map(|r| (r.name.clone(), r.content.clone()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_added_and_removed_through_the_documented_api() {
    let (api, state) = serve().await;
    let d = cloudflare(&api, TOKEN, None);
    let name = "_acme-challenge.mqtt.example.test";

    d.publish("mqtt.example.test", "token-one").await.unwrap();
    d.publish("*.mqtt.example.test", "token-two").await.unwrap();
    assert_eq!(
        txt(&state),
        [
            (name.to_string(), "token-one".to_string()),
            (name.to_string(), "token-two".to_string())
        ]
    );
    assert!(state
        .lock()
        .unwrap()
        .records
        .iter()
        .all(|r| r.zone == ZONE_ID && r.ttl == 120));
    // Publishing the same value again (a retry) is not an error.
    d.publish("mqtt.example.test", "token-one").await.unwrap();
    assert_eq!(txt(&state).len(), 2);

    d.clear("mqtt.example.test", "token-one").await.unwrap();
    assert_eq!(txt(&state), [(name.to_string(), "token-two".to_string())]);
    d.clear("*.mqtt.example.test", "token-two").await.unwrap();
    assert!(txt(&state).is_empty());
    // Nothing left to clear: no DELETE is sent.
    d.clear("mqtt.example.test", "token-one").await.unwrap();

    let log = state.lock().unwrap().log.clone();
    // The zone is found from the most specific parent name down.
    assert_eq!(log[0], "GET /zones?name=mqtt.example.test");
    assert_eq!(log[1], "GET /zones?name=example.test");
    assert_eq!(log[2], format!("POST /zones/{ZONE_ID}/dns_records"));
    assert!(log.contains(&format!(
        "GET /zones/{ZONE_ID}/dns_records?name={name}&type=TXT"
    )));
    let deletes = log.iter().filter(|l| l.starts_with("DELETE ")).count();
    assert_eq!(deletes, 2, "{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_zone_id_skips_the_lookup() {
    let (api, state) = serve().await;
    let d = cloudflare(&api, TOKEN, Some(ZONE_ID));
    d.publish("mqtt.example.test", "v").await.unwrap();
    let log = state.lock().unwrap().log.clone();
    assert_eq!(log, [format!("POST /zones/{ZONE_ID}/dns_records")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_reported_with_cloudflares_error() {
    let (api, state) = serve().await;
    let d = cloudflare(&api, "wrong-token", None);
    let err = d.publish("mqtt.example.test", "v").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Cloudflare(cloudflare::Error::Call {
                source: cloudflare::CallError::Refused { status, errors, .. },
                ..
            }) if status.as_u16() == 403 && errors.first().is_some_and(|(c, _)| *c == 10000)
        ),
        "{err:?}"
    );
    let e = err.to_string();
    assert_eq!(
        e,
        "cloudflare: looking up zone mqtt.example.test: GET /zones: HTTP 403 Forbidden: 10000 Authentication error"
    );
    assert!(txt(&state).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_in_no_zone_of_the_token_is_named() {
    let (api, _state) = serve().await;
    let d = cloudflare(&api, TOKEN, None);
    let e = d
        .publish("mqtt.nowhere.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "cloudflare: no zone of this token holds _acme-challenge.mqtt.nowhere.test (tried mqtt.nowhere.test, nowhere.test); check the token's zone permissions or set zoneId"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_carries_the_api_error() {
    let (api, _state) = serve().await;
    // A zone id that does not hold the name: the API refuses the record.
    let d = cloudflare(&api, TOKEN, Some("99aa"));
    let e = d
        .publish("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "cloudflare: adding TXT _acme-challenge.mqtt.example.test: POST /zones/99aa/dns_records: HTTP 400 Bad Request: 9005 Content for the record name is outside the zone."
    );
}

/// A server that is not Cloudflare, reached because `apiUrl` points at it: it echoes
/// the Authorization header in an API error, or in a page that is not an envelope.
async fn echoing_server(envelope: bool) -> String {
    let echo = move |h: HeaderMap| async move {
        let auth = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if envelope {
            failure(StatusCode::BAD_REQUEST, 1000, &format!("you sent {auth}"))
        } else {
            (
                StatusCode::BAD_GATEWAY,
                format!("<html>you sent {auth}</html>"),
            )
                .into_response()
        }
    };
    api_url(Router::new().fallback(echo)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_echoing_the_token_never_puts_it_into_the_error() {
    let d = cloudflare(&echoing_server(true).await, TOKEN, Some(ZONE_ID));
    let e = d
        .publish("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("cloudflare: adding TXT _acme-challenge.mqtt.example.test: POST /zones/{ZONE_ID}/dns_records: HTTP 400 Bad Request: 1000 you sent Bearer [redacted]")
    );
    let d = cloudflare(&echoing_server(false).await, TOKEN, Some(ZONE_ID));
    let e = d
        .publish("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(!e.contains(TOKEN), "{e}");
    assert!(
        e.starts_with(&format!("cloudflare: adding TXT _acme-challenge.mqtt.example.test: POST /zones/{ZONE_ID}/dns_records: HTTP 502 Bad Gateway: not a Cloudflare API answer (")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_and_named() {
    // `apiUrl` may name any server: one answering with more than 1 MB is not read on.
    let huge = || async { (StatusCode::OK, vec![b' '; 2 << 20]).into_response() };
    let api = api_url(Router::new().fallback(huge)).await;
    let d = cloudflare(&api, TOKEN, Some(ZONE_ID));
    let e = d
        .publish("mqtt.example.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("cloudflare: adding TXT _acme-challenge.mqtt.example.test: POST /zones/{ZONE_ID}/dns_records: HTTP 200 OK: more than 1048576 bytes")
    );
}
