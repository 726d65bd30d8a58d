//! The northbound REST API end to end: a full system (every component a
//! separate process on a real broker) plus `wfm northbound` processes.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use wfm_protocol::Topic;

use crate::harness::{free_port, get_json, read_topic, TestBroker, WfmProcess};
use crate::system::{System, TEST_CONFIG};

const SETTLE: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-token";

/// A `wfm northbound` process with its own config on top of the test config.
struct Api {
    url: String,
    http: Client,
    _process: WfmProcess,
    config_path: std::path::PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

impl Api {
    async fn start(system: &System, northbound: &str) -> Self {
        let config_path =
            std::env::temp_dir().join(format!("wfm-nb-{}.toml", rand::random::<u64>()));
        std::fs::write(
            &config_path,
            format!("{TEST_CONFIG}\n[northbound]\n{northbound}\n"),
        )
        .expect("config written");
        let addr = format!("127.0.0.1:{}", free_port());
        let process = WfmProcess::spawn(
            &[
                "northbound",
                "--config",
                config_path.to_str().expect("utf-8"),
                "--http-addr",
                &addr,
            ],
            Some(&system.broker.kafka),
        )
        .await;
        let api = Self {
            url: format!("http://{addr}"),
            http: Client::new(),
            _process: process,
            config_path,
        };
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let ready = api.http.get(format!("{}/ready", api.url)).send().await;
            if matches!(&ready, Ok(r) if r.status() == StatusCode::OK) {
                // The topology view must hold the simulator's switches before 404 checks mean anything.
                let switches = api.get("/v2/switches").await.1;
                if switches.as_array().is_some_and(|s| s.len() == 6) {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "northbound never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_vec());
        }
        request.send().await.expect("API reachable")
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let response = self.send(method, path, bytes.as_deref(), headers).await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, &[]).await
    }

    async fn create(&self, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/v2/flows", Some(body), &[]).await
    }

    async fn delete(&self, flow_id: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, &format!("/v2/flows/{flow_id}"), None, &[])
            .await
    }

    /// Polls the flow until `done` holds for (status code, body).
    async fn until(
        &self,
        flow_id: &str,
        done: impl Fn(StatusCode, &Value) -> bool,
    ) -> (StatusCode, Value) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let (status, body) = self.get(&format!("/v2/flows/{flow_id}")).await;
            if done(status, &body) || tokio::time::Instant::now() >= deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn pending(&self) -> u64 {
        let (_, inspect) = self.get("/v2/inspect").await;
        inspect["northbound"]["pending"]
            .as_u64()
            .expect("pending size")
    }
}

fn sw(n: u64) -> String {
    wfm_protocol::topology::switch_id(n)
}

fn flow_body(flow_id: &str, src: (u64, u32, u16), dst: (u64, u32, u16)) -> Value {
    json!({
        "flow_id": flow_id,
        "source": { "switch_id": sw(src.0), "port_number": src.1, "vlan_id": src.2 },
        "destination": { "switch_id": sw(dst.0), "port_number": dst.1, "vlan_id": dst.2 },
        "maximum_bandwidth": 1000,
        "description": "through the API"
    })
}

fn error_description(body: &Value) -> &str {
    body["error-description"].as_str().unwrap_or_default()
}

/// Correlation ids of every command that reached the hub's inbox.
async fn hub_correlation_ids(system: &System) -> HashSet<String> {
    let kafka = &system.broker.kafka;
    read_topic(
        kafka,
        &kafka.topics().name(Topic::Hub),
        Duration::from_secs(3),
        |_| false,
    )
    .await
    .iter()
    .filter_map(|r| r.envelope())
    .map(|e| e.correlation_id)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wfm_up_serves_a_create_the_moment_it_says_ready() {
    let broker = TestBroker::start().await;
    let http = format!("127.0.0.1:{}", free_port());
    let simulator = format!("127.0.0.1:{}", free_port());
    // Spawning returns once `wfm ready` is printed.
    let _system = WfmProcess::spawn_with_env(
        &["up", "--http-addr", &http],
        Some(&broker.kafka),
        &[("WFM_SIMULATOR_ADDR", &simulator)],
    )
    .await;
    let http_client = Client::new();
    let switches = get_json(&http_client, &format!("http://{http}/v2/switches")).await;
    assert_eq!(switches.as_array().map(Vec::len), Some(6), "{switches}");
    let response = http_client
        .post(format!("http://{http}/v2/flows"))
        .json(&flow_body("at-once", (1, 1, 10), (3, 1, 10)))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "IN_PROGRESS", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_created_listed_traced_and_deleted_over_http() {
    let system = System::start().await;
    let api = Api::start(&system, "").await;

    let body = flow_body("http-1", (1, 1, 100), (3, 2, 0));
    let response = api
        .send(
            Method::POST,
            "/v2/flows",
            Some(&serde_json::to_vec(&body).unwrap()),
            &[("correlation_id", "crud-create-1")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["correlation_id"], "crud-create-1");
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["status"], "IN_PROGRESS");
    assert_eq!(created["source"]["vlan_id"], 100);

    // One operation per flow: both a second create and a delete meet the running create.
    let (status, error) = api.create(&body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error-type"], "conflict");
    let (status, error) = api.delete("http-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert!(error_description(&error).contains("busy"), "{error}");

    let (_, flow) = api.until("http-1", |_, f| f["status"] == "UP").await;
    assert_eq!(flow["status"], "UP", "{flow}");
    let (status, error) = api.create(&body).await;
    assert_eq!(status, StatusCode::CONFLICT, "an existing flow: {error}");

    let (_, up) = api.get("/v2/flows?status=UP").await;
    assert!(up
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["flow_id"] == "http-1"));
    let (_, down) = api.get("/v2/flows?status=DOWN").await;
    assert!(down
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["flow_id"] != "http-1"));
    let (status, error) = api.get("/v2/flows?status=SIDEWAYS").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    let (status, path) = api.get("/v2/flows/http-1/path").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        path["forward_path"].as_array().unwrap().len() >= 2,
        "{path}"
    );
    assert_eq!(path["forward_path"][0]["src_switch"], sw(1));

    let (_, history) = api.get("/v2/flows/http-1/history").await;
    let events = history["events"].as_array().unwrap();
    assert!(events.len() >= 6, "{history}");
    assert!(events
        .iter()
        .any(|e| e["correlation_id"] == "crud-create-1"));
    let (_, latest) = api.get("/v2/flows/http-1/history?max_count=2").await;
    let latest = latest["events"].as_array().unwrap().clone();
    assert_eq!(latest.len(), 2);
    // Events may still be appended (the rejected duplicate's), so compare
    // against a history read afterwards: the two are its newest at the time.
    let (_, history) = api.get("/v2/flows/http-1/history").await;
    let events = history["events"].as_array().unwrap();
    let newest = events
        .iter()
        .position(|e| *e == latest[1])
        .expect("the latest event is in the full history");
    assert_eq!(events[newest - 1], latest[0], "{history}");
    let first_at = events[0]["at"].as_i64().unwrap();
    let (_, window) = api
        .get(&format!("/v2/flows/http-1/history?time_to={first_at}"))
        .await;
    assert!(window["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["at"].as_i64() <= Some(first_at)));

    let (_, switches) = api.get("/v2/switches").await;
    assert_eq!(switches.as_array().unwrap().len(), 6);
    let (_, links) = api.get("/v2/links").await;
    assert!(!links.as_array().unwrap().is_empty());

    let (status, error) = api.get("/v2/flows/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error-type"], "not_found");
    let (status, error) = api.delete("nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the hub's answer: {error}");

    let (status, deleted) = api.delete("http-1").await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let (status, _) = api.until("http-1", |s, _| s == StatusCode::NOT_FOUND).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, history) = api.get("/v2/flows/http-1/history").await;
    assert!(history["events"].as_array().unwrap().len() > events.len());
    assert!(system
        .installed_rules()
        .await
        .iter()
        .all(|(_, f, _)| f != "http-1"));

    let (_, inspect) = api.get("/v2/inspect").await;
    assert_eq!(inspect["hub"]["source"], "changelog", "{inspect}");
    assert_eq!(inspect["northbound"]["pending"], 0);
    let metrics = api
        .send(Method::GET, "/metrics", None, &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"wfm_http_requests_total{method="POST",route="/v2/flows",status="409"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("wfm_http_request_duration_seconds_bucket"));
    assert!(metrics.contains("wfm_consumer_state{consumer=\"northbound-flows\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_unauthorized_requests_never_reach_kafka() {
    let system = System::start().await;
    let api = Api::start(
        &system,
        &format!("auth_tokens = [\"{TOKEN}\"]\nmax_body_bytes = 4096"),
    )
    .await;
    let auth = format!("Bearer {TOKEN}");
    let valid = flow_body("v-1", (1, 1, 0), (2, 1, 0));
    let with = |pointer: &str, value: Value| {
        let mut body = valid.clone();
        let (parent, field) = pointer.rsplit_once('/').expect("a pointer");
        body.pointer_mut(parent).expect("parent")[field] = value;
        body
    };
    let mut without_destination = valid.clone();
    without_destination
        .as_object_mut()
        .unwrap()
        .remove("destination");
    let mut unknown_field = valid.clone();
    unknown_field["colour"] = json!("blue");
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "missing",
            without_destination,
            StatusCode::BAD_REQUEST,
            "missing field `destination`",
        ),
        (
            "unknown",
            unknown_field,
            StatusCode::BAD_REQUEST,
            "unknown field `colour`",
        ),
        (
            "id-empty",
            with("/flow_id", json!("")),
            StatusCode::BAD_REQUEST,
            "flow_id must be 1 to 100",
        ),
        (
            "id-long",
            with("/flow_id", json!("x".repeat(101))),
            StatusCode::BAD_REQUEST,
            "flow_id must be 1 to 100",
        ),
        (
            "id-syntax",
            with("/flow_id", json!("a b")),
            StatusCode::BAD_REQUEST,
            "may only contain",
        ),
        (
            "switch",
            with("/source/switch_id", json!("01:02")),
            StatusCode::BAD_REQUEST,
            "source.switch_id `01:02`",
        ),
        (
            "port",
            with("/destination/port_number", json!(0)),
            StatusCode::BAD_REQUEST,
            "destination.port_number must be at least 1",
        ),
        (
            "vlan",
            with("/source/vlan_id", json!(4096)),
            StatusCode::BAD_REQUEST,
            "source.vlan_id 4096 is out of range",
        ),
        (
            "inner",
            with("/source/inner_vlan_id", json!(7)),
            StatusCode::BAD_REQUEST,
            "needs an outer vlan_id",
        ),
        (
            "bandwidth",
            with("/maximum_bandwidth", json!(-5)),
            StatusCode::BAD_REQUEST,
            "invalid value: integer `-5`",
        ),
        (
            "same",
            with("/destination", valid["source"].clone()),
            StatusCode::BAD_REQUEST,
            "same endpoint",
        ),
        (
            "large",
            with("/description", json!("d".repeat(8000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds 4096 bytes",
        ),
        (
            "unknown-switch",
            with("/source/switch_id", json!(sw(99))),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "unknown-port",
            with("/source/port_number", json!(999)),
            StatusCode::NOT_FOUND,
            "has no port 999",
        ),
    ];
    let mut correlation_ids = Vec::new();
    for (name, body, expected, message) in &cases {
        let id = format!("invalid-{name}");
        let bytes = serde_json::to_vec(body).unwrap();
        let response = api
            .send(
                Method::POST,
                "/v2/flows",
                Some(&bytes),
                &[("correlation_id", &id), ("authorization", &auth)],
            )
            .await;
        assert_eq!(response.status(), *expected, "{name}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["correlation_id"], id.as_str(), "{name}");
        assert!(
            error_description(&error).contains(message),
            "{name}: {error}"
        );
        for field in ["timestamp", "error-type", "error-message"] {
            assert!(error.get(field).is_some(), "{name}: {field}");
        }
        correlation_ids.push(id);
    }
    let response = api
        .send(
            Method::POST,
            "/v2/flows",
            Some(b"{not json"),
            &[("correlation_id", "invalid-json"), ("authorization", &auth)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    correlation_ids.push("invalid-json".into());
    let response = api
        .send(
            Method::DELETE,
            "/v2/flows/bad%20id",
            None,
            &[
                ("correlation_id", "invalid-delete"),
                ("authorization", &auth),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    correlation_ids.push("invalid-delete".into());

    // Authentication comes first: without a valid token nothing is even validated.
    let bytes = serde_json::to_vec(&valid).unwrap();
    for (id, headers) in [
        ("unauth-none", vec![]),
        ("unauth-wrong", vec![("authorization", "Bearer wrong")]),
        (
            "unauth-basic",
            vec![("authorization", "Basic czNjcmV0LXRva2Vu")],
        ),
    ] {
        let mut headers = headers;
        headers.push(("correlation_id", id));
        let response = api
            .send(Method::POST, "/v2/flows", Some(&bytes), &headers)
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{id}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let response = api
            .send(Method::DELETE, "/v2/flows/v-1", None, &headers)
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{id}");
        correlation_ids.push(id.into());
    }
    assert_eq!(
        api.get("/v2/flows").await.0,
        StatusCode::OK,
        "reads need no token"
    );

    // A valid, authorized request does reach the hub: proof that the topic is read right.
    let response = api
        .send(
            Method::POST,
            "/v2/flows",
            Some(&bytes),
            &[("correlation_id", "authorized-1"), ("authorization", &auth)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = hub_correlation_ids(&system).await;
    assert!(seen.contains("authorized-1"), "{seen:?}");
    for id in &correlation_ids {
        assert!(!seen.contains(id), "{id} reached wfm.hub");
    }

    // The document lists exactly what is served: every documented operation is routed.
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v2/flows",
        "/v2/flows/{flow_id}",
        "/v2/flows/{flow_id}/path",
        "/v2/flows/{flow_id}/history",
        "/v2/switches",
        "/v2/links",
        "/v2/inspect",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} documented");
    }
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let response = api
                .send(method.clone(), &path.replace("{flow_id}", "v-1"), None, &[])
                .await;
            assert_ne!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(
                !error_description(&body).starts_with("no route"),
                "{method} {path} is not served"
            );
        }
    }
    let (status, error) = api.get("/v2/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_description(&error).starts_with("no route"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_hub_gets_408_and_leaves_no_pending_entry() {
    let mut system = System::start().await;
    let api = Api::start(&system, "request_timeout_ms = 1500").await;
    system.kill("hub").await;
    let started = std::time::Instant::now();
    let (status, error) = api.create(&flow_body("t-1", (1, 1, 0), (2, 1, 0))).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{error}");
    assert_eq!(error["error-type"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(api.pending().await, 0);
    let metrics = api
        .send(Method::GET, "/metrics", None, &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("wfm_northbound_pending 0"), "{metrics}");
}

/// `wfm flow create|delete --wait` against the API: the client must ride out
/// the read view trailing the hub right after a create is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_waits_for_create_and_delete_to_finish() {
    let system = System::start().await;
    let api = Api::start(&system, "").await;
    let wfm = |args: Vec<String>| {
        let url = api.url.clone();
        async move {
            tokio::process::Command::new(crate::harness::WFM)
                .args(&args)
                .args(["--url", &url, "--json"])
                .env("WFM_LOG", "warn")
                .output()
                .await
                .expect("wfm flow runs")
        }
    };
    let create: Vec<String> = [
        "flow",
        "create",
        "cli-1",
        "--src-switch",
        &sw(1),
        "--src-port",
        "1",
        "--dst-switch",
        &sw(4),
        "--dst-port",
        "2",
        "--bandwidth",
        "1000",
        "--wait",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let output = wfm(create).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"UP\""), "{stdout}");

    let delete = ["flow", "delete", "cli-1", "--wait"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let output = wfm(delete).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"deleted\":true"));
    let (status, _) = api.get("/v2/flows/cli-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Property-based fuzzing of the whole API from its OpenAPI document. Needs
/// schemathesis (`pip install schemathesis`); skipped with a message without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors() {
    let st = std::env::var("WFM_SCHEMATHESIS").unwrap_or_else(|_| "st".into());
    if std::process::Command::new(&st)
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: schemathesis (`{st}`) is not installed; `pip install schemathesis` to run this test");
        return;
    }
    let system = System::start().await;
    let api = Api::start(&system, "").await;
    let output = tokio::process::Command::new(&st)
        .args([
            "run",
            &format!("{}/openapi.json", api.url),
            "--checks",
            "all",
            // Cross-field rules (e.g. distinct endpoints) cannot be said in the schema,
            // and a DELETE is answered when accepted, before the flow is gone.
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
            "--max-examples",
            "15",
            "--max-time",
            "60",
            // One worker: with two threads, hypothesis's lambda descriptions
            // race in CPython 3.11's `ast.parse` and schemathesis now and then
            // reports that as a runtime error of its own.
            "--workers",
            "1",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()
        .await
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
