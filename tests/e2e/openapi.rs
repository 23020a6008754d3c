//! The API document (`GET /openapi.json`) against the OpenAPI 3 specification and
//! against the server that serves it.
//!
//! 1. The served document is checked by a real validator, `openapi-spec-validator`
//!    (PyPI; `./scripts/test` installs it into `target/test-services/openapi-venv`),
//!    and by the project's own rules: security on every operation but the public
//!    ones, an error schema on every error answer, `Retry-After` on 429, limits
//!    stated, links from every create operation to the operations using its ids.
//! 2. For EVERY operation the document lists (new routes included, with no change
//!    here), the real server gets bad input: no credential, the wrong kind of
//!    credential, a malformed one; malformed JSON, a body of the wrong shape, the
//!    wrong content type, an over-limit body; unknown ids and another tenant's ids in
//!    the path; query parameters of the wrong type; its budget exhausted where it
//!    documents 429; the store down (503); and, where the fixture knows a valid
//!    request, that request. Each answer's status must be documented for the
//!    operation, and its body must validate (JSON Schema 2020-12, the `jsonschema`
//!    package under the validator) against the schema documented for that status;
//!    error bodies are also checked here against the error table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{address, Device, Tenant, TestServer, Ws, WAIT};

/// Operations that take no credential, by design (`security.rs` says why).
const PUBLIC: &[(&str, &str)] = &[("GET", "/health"), ("GET", "/metrics")];

/// The budget of the `low` lane in the test server: a valid send is answered 201,
/// the next ones 429.
const LOW_BUDGET: u32 = 1;
/// Byte limits of the test server (bulk and contacts smaller than the defaults, so
/// an over-limit body stays small); a body of [`OVER_LIMIT`] is over every one.
const BULK_BYTES: usize = 128 * 1024;
const CONTACTS_BYTES: usize = 128 * 1024;
const OVER_LIMIT: usize = 160 * 1024;

/// Validates the document, and each observed answer's body against its schema.
const VALIDATOR: &str = r#"
import json, sys
import jsonschema
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator, validate

doc = json.load(open(sys.argv[1]))
cls = OpenAPIV31SpecValidator if str(doc.get("openapi", "")).startswith("3.1") else OpenAPIV30SpecValidator
errors = [e.message for e in cls(doc).iter_errors()]
if errors:
    print("the document is not valid OpenAPI %s:" % doc.get("openapi"))
    for e in errors:
        print("  - " + e[:500])
    sys.exit(1)
validate(doc)  # the package's own verdict, version detected from the document
print("openapi-spec-validator: the document is valid OpenAPI %s" % doc["openapi"])
if len(sys.argv) > 2:
    failures = []
    observed = json.load(open(sys.argv[2]))
    for o in observed:
        # The document's components ride along so `#/components/...` resolves.
        schema = dict(o["schema"])
        schema["components"] = doc.get("components", {})
        validator = jsonschema.Draft202012Validator(schema)
        for e in sorted(validator.iter_errors(o["body"]), key=lambda e: list(e.absolute_path)):
            failures.append("%s: body does not match the documented schema at %s: %s\n      body: %s"
                % (o["what"], "/".join(map(str, e.absolute_path)) or "(root)", e.message[:300],
                   json.dumps(o["body"])[:300]))
    print("jsonschema: %d answers checked against their documented schemas" % len(observed))
    if failures:
        print("%d answers do not match their schema:" % len(failures))
        for f in failures:
            print("  - " + f)
        sys.exit(1)
"#;

/// The Python of the validator's virtualenv; fails (never skips) when it is missing.
fn validator_python() -> PathBuf {
    let python = std::env::var_os("SWITCHBOARD_TEST_OPENAPI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/test-services/openapi-venv/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import openapi_spec_validator, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the OpenAPI validator is missing: {} cannot import openapi_spec_validator. \
         Run ./scripts/test (it installs it), or install it by hand: \
         python3 -m venv target/test-services/openapi-venv && \
         target/test-services/openapi-venv/bin/pip install openapi-spec-validator \
         (or point SWITCHBOARD_TEST_OPENAPI_PYTHON at a Python that has it)",
        python.display()
    );
    python
}

/// Runs the validator on `doc` (and on `observed` answers, if any): its report, as
/// an error when it failed.
fn run_validator(doc: &Value, observed: Option<&Vec<Value>>) -> Result<String, String> {
    let python = validator_python();
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let mut cmd = Command::new(&python);
    cmd.arg("-c").arg(VALIDATOR).arg(&doc_path);
    if let Some(observed) = observed {
        let path = dir.path().join("observed.json");
        std::fs::write(&path, serde_json::to_vec(observed).unwrap()).unwrap();
        cmd.arg(&path);
    }
    let out = cmd.output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// One operation of the document.
#[derive(Debug, Clone)]
struct Op {
    method: String,
    template: String,
    op: Value,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }

    fn id(&self) -> &str {
        self.op["operationId"].as_str().unwrap_or("")
    }

    fn schemes(&self) -> BTreeSet<String> {
        self.op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|o| o.keys().cloned())
            .collect()
    }

    fn params(&self, location: &str) -> Vec<Value> {
        self.op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == location)
            .cloned()
            .collect()
    }

    /// Whether it takes a JSON body, and whether that body is required.
    fn json_body(&self) -> Option<bool> {
        let body = &self.op["requestBody"];
        body["content"]["application/json"]
            .is_object()
            .then(|| body["required"].as_bool().unwrap_or(false))
    }

    fn response(&self, status: u16) -> Option<&Value> {
        let responses = &self.op["responses"];
        responses
            .get(status.to_string())
            .or_else(|| responses.get(format!("{}XX", status / 100)))
            .or_else(|| responses.get("default"))
    }

    fn statuses(&self) -> Vec<String> {
        self.op["responses"]
            .as_object()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                ops.push(Op {
                    method: method.to_uppercase(),
                    template: template.clone(),
                    op: op.clone(),
                });
            }
        }
    }
    ops
}

/// `#/components/...` of the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => schema,
    }
}

async fn served_document(server: &TestServer) -> Value {
    let (status, doc) = server.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200, "{doc}");
    doc
}

/// The document validates against the OpenAPI specification, and follows the
/// project's rules for security, errors, limits and links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_is_valid_and_complete() {
    let server = TestServer::start().await;
    let doc = served_document(&server).await;
    if let Err(report) = run_validator(&doc, None) {
        panic!("openapi-spec-validator refused the served document:\n{report}");
    }

    let ops = operations(&doc);
    assert!(
        ops.len() >= 30,
        "suspiciously few operations: {}",
        ops.len()
    );
    let mut problems: Vec<String> = Vec::new();
    let schemes = &doc["components"]["securitySchemes"];
    for (name, kind) in [("tenant_key", "http"), ("admin_token", "http")] {
        if schemes[name]["type"] != kind || schemes[name]["scheme"] != "bearer" {
            problems.push(format!(
                "security scheme {name} is not a bearer scheme: {}",
                schemes[name]
            ));
        }
    }
    let ids: Vec<&str> = ops.iter().map(Op::id).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    if unique.len() != ids.len() || unique.contains("") {
        problems.push(format!("operationIds missing or not unique: {ids:?}"));
    }
    for op in &ops {
        let name = op.name();
        let public = PUBLIC.contains(&(op.method.as_str(), op.template.as_str()));
        let schemes_used = op.schemes();
        match (public, schemes_used.is_empty()) {
            (true, false) => problems.push(format!("{name} is public but declares security")),
            (false, true) => problems.push(format!(
                "{name} declares no security (add `security(...)`, or list it in PUBLIC)"
            )),
            _ => {}
        }
        for s in &schemes_used {
            if !schemes[s].is_object() {
                problems.push(format!("{name}: security scheme {s} is not in components"));
            }
        }
        let documented = op.statuses();
        let must = |status: &str, why: &str, problems: &mut Vec<String>| {
            if !documented.iter().any(|s| s == status) {
                problems.push(format!("{name}: {why} but {status} is not documented"));
            }
        };
        if !schemes_used.is_empty() {
            must("401", "takes credentials", &mut problems);
        }
        if op.json_body().is_some() {
            must("400", "takes a JSON body", &mut problems);
            must("413", "takes a bounded body", &mut problems);
            let description = op.op["requestBody"]["description"].as_str().unwrap_or("");
            if !(description.contains("max_")
                && (description.contains("KiB") || description.contains("MiB")))
            {
                problems.push(format!(
                    "{name}: the request body does not state its byte limit: {description:?}"
                ));
            }
        }
        for (status, response) in op.op["responses"].as_object().unwrap() {
            if response["description"].as_str().unwrap_or("").is_empty() {
                problems.push(format!("{name} {status}: no description"));
            }
            let content = response["content"].as_object();
            // 204 and 304 have no body.
            if !["204", "304"].contains(&status.as_str())
                && content.is_none_or(|c| c.values().any(|m| !m["schema"].is_object()))
            {
                problems.push(format!("{name} {status}: no schema for the body"));
            }
            // Public probes (`/health`) answer their own shape; the rest the error body.
            if !public && (status.starts_with('4') || status.starts_with('5')) {
                let schema = &response["content"]["application/json"]["schema"];
                if schema["$ref"] != "#/components/schemas/ErrorBody" {
                    problems.push(format!(
                        "{name} {status}: the error body is not ErrorBody: {schema}"
                    ));
                }
            }
            if status == "429" && !response["headers"]["Retry-After"].is_object() {
                problems.push(format!("{name} 429: Retry-After is not documented"));
            }
            // Links name existing operations and their parameters.
            for (link, target) in response["links"].as_object().into_iter().flatten() {
                let Some(to) = ops.iter().find(|o| o.id() == target["operationId"]) else {
                    problems.push(format!(
                        "{name} {status}: link {link} names no operation: {target}"
                    ));
                    continue;
                };
                for p in target["parameters"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    let known = to.op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|q| q["name"] == p.as_str());
                    if !known {
                        problems.push(format!(
                            "{name} {status}: link {link} sets {p}, not a parameter of {}",
                            to.name()
                        ));
                    }
                }
            }
            // A create operation links to the operations that use the ids it returns.
            let schema = resolve(&doc, &response["content"]["application/json"]["schema"]);
            let returns_ids =
                schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .any(|(k, _)| {
                        (status == "201" && k.ends_with("_id"))
                            || (status == "202" && k.starts_with("job_id"))
                    });
            if returns_ids && response["links"].as_object().is_none_or(|l| l.is_empty()) {
                problems.push(format!(
                    "{name} {status} returns ids but links to no operation"
                ));
            }
        }
    }
    // Limits from the code are stated as schema constraints.
    let schemas = &doc["components"]["schemas"];
    for (pointer, want) in [
        (
            "/BulkRequest/properties/messages/maxItems",
            protocol::bulk::MAX_BULK_MESSAGES,
        ),
        (
            "/BulkRequest/properties/to/maxItems",
            protocol::bulk::MAX_CAMPAIGN_RECIPIENTS,
        ),
        (
            "/CreateGroup/properties/members/maxItems",
            protocol::rest::MAX_GROUP_MEMBERS,
        ),
        (
            "/GroupMembers/properties/members/maxItems",
            protocol::rest::MAX_GROUP_MEMBERS,
        ),
        (
            "/SendMessage/properties/id/maxLength",
            protocol::validate::MAX_CLIENT_ID_LEN,
        ),
        ("/CreateTenant/properties/name/maxLength", 200),
        ("/CreateDevice/properties/name/maxLength", 200),
        ("/CreateGroup/properties/name/maxLength", 200),
        ("/Contact/properties/name/maxLength", 200),
    ] {
        if schemas.pointer(pointer).and_then(Value::as_u64) != Some(want as u64) {
            problems.push(format!(
                "schema {pointer} should be {want}: {:?}",
                schemas.pointer(pointer)
            ));
        }
    }
    for (route, id) in [
        ("/v1/devices/{id}/messages", "limit"),
        ("/v1/devices", "limit"),
    ] {
        let op = ops
            .iter()
            .find(|o| o.template == route && o.method == "GET")
            .unwrap();
        let limit = op
            .params("query")
            .into_iter()
            .find(|p| p["name"] == id)
            .unwrap();
        if limit["schema"]["maximum"].as_u64() != Some(u64::from(protocol::rest::MAX_PAGE)) {
            problems.push(format!(
                "{route} `limit` should state maximum {}",
                protocol::rest::MAX_PAGE
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

/// What the fixture holds: two tenants, their devices, groups, a message and a job.
struct Fixture {
    a: Tenant,
    a1: Device,
    a2: Device,
    a1_token: String,
    /// a2's client: its session runs (for the admin session actions), and it read
    /// a1's message (so a1's inbox holds a status entry).
    _a2_client: Ws,
    a_group: String,
    a_job: String,
    a_message: String,
    b1: Device,
    b_group: String,
    b_job: String,
}

const FAR_FUTURE_MS: i64 = 4_102_444_800_000; // 2100-01-01

async fn fixture(server: &TestServer) -> Fixture {
    let a = server.tenant().await;
    let b = server.tenant().await;
    let (a1, a2, b1) = (a.device().await, a.device().await, b.device().await);
    let a1_token = a.token(&a1).await;
    let group = |t: &Tenant, members: Vec<String>| {
        let t = t.clone();
        async move {
            let (s, g) = t
                .call(
                    "POST",
                    "/v1/groups",
                    Some(json!({"name": "g", "members": members})),
                )
                .await;
            assert_eq!(s, 201, "{g}");
            g["group_id"].as_str().unwrap().to_owned()
        }
    };
    let a_group = group(&a, vec![a1.address.clone(), a2.address.clone()]).await;
    let b_group = group(&b, vec![b1.address.clone()]).await;
    let job = |t: &Tenant, d: &Device| {
        let (t, d) = (t.clone(), d.clone());
        async move {
            let (s, j) = t
                .call(
                    "POST",
                    "/v1/messages/bulk",
                    Some(
                        json!({"messages": [{"device": d.id, "to": address(), "body": {}}],
                                "send_at": FAR_FUTURE_MS}),
                    ),
                )
                .await;
            assert_eq!(s, 202, "{j}");
            j["job_ids"][0].as_str().unwrap().to_owned()
        }
    };
    let a_job = job(&a, &a1).await;
    let b_job = job(&b, &b1).await;
    let (s, m) = a
        .call(
            "POST",
            &format!("/v1/devices/{}/messages", a1.id),
            Some(json!({"to": a2.address, "body": {"text": "hi"}, "priority": "critical", "id": "c1"})),
        )
        .await;
    assert_eq!(s, 201, "{m}");
    let a_message = m["message_id"].as_str().unwrap().to_owned();
    let mut a2_client = a.connect(&a2).await;
    a2_client
        .send(json!({"type": "receipt", "message_ids": [a_message], "status": "read"}))
        .await;
    // The sender's inbox lists the status after its message (the history's second kind of entry).
    let history = format!("/v1/devices/{}/messages", a1.id);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, page) = a.call("GET", &history, None).await;
        assert_eq!(s, 200, "{page}");
        if page["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["type"] == "status"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no status entry: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Fixture {
        _a2_client: a2_client,
        a_message,
        a,
        a1,
        a2,
        a1_token,
        a_group,
        a_job,
        b1,
        b_group,
        b_job,
    }
}

/// Whose ids a path is filled with.
#[derive(Clone, Copy, PartialEq)]
enum Ids {
    /// Tenant A's (the caller's).
    Own,
    /// Tenant B's: another tenant's resources.
    Other,
    /// Ids nobody has.
    Unknown,
}

/// The value of path parameter `name` in `template`.
fn path_value(fx: &Fixture, template: &str, name: &str, ids: Ids) -> String {
    if ids == Ids::Unknown {
        return "zz_unknown".into();
    }
    let other = ids == Ids::Other;
    let pick = |own: &str, theirs: &str| {
        if other {
            theirs.to_owned()
        } else {
            own.to_owned()
        }
    };
    match name {
        "id" if template.starts_with("/v1/groups/") => pick(&fx.a_group, &fx.b_group),
        "id" if template.starts_with("/v1/jobs/") => pick(&fx.a_job, &fx.b_job),
        // The device whose session runs.
        "id" if template.starts_with("/admin/devices/") => fx.a2.id.clone(),
        "id" => pick(&fx.a1.id, &fx.b1.id),
        "message_id" => fx.a_message.clone(),
        "client_id" => "c1".into(),
        "address" => fx.a2.address.clone(),
        "lane" => "low".into(),
        "kind" => "devices".into(),
        "key" => fx.a1.id.clone(),
        // A parameter this fixture does not know (a new route): a plain value.
        _ => "x".into(),
    }
}

fn fill(fx: &Fixture, template: &str, ids: Ids) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        out.push_str(&path_value(fx, template, &rest[start + 1..end], ids));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A valid body for the operations the fixture knows (others get `{}`).
fn valid_body(fx: &Fixture, op: &Op) -> Value {
    match op.id() {
        "create_tenant" => json!({"name": "another"}),
        "create_device" => json!({"address": address(), "name": "d"}),
        "create_token" => json!({"ttl_secs": 60}),
        "put_contacts" => json!({"contacts": [{"address": address(), "name": "c"}]}),
        "create_group" => json!({"name": "g2", "members": [fx.a1.address]}),
        "add_members" => json!({"members": [fx.a2.address]}),
        "send_message" => json!({"to": fx.a2.address, "body": {"text": "hi"}, "priority": "low"}),
        "bulk_send" => json!({"messages": [{"device": fx.a1.id, "to": fx.a2.address, "body": {}}],
                              "send_at": FAR_FUTURE_MS}),
        _ => json!({}),
    }
}

/// One request.
struct Probe {
    what: String,
    path: String,
    bearer: Option<String>,
    body: Option<(String, Vec<u8>)>,
}

/// One answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: Option<String>,
}

async fn send(server: &TestServer, method: &str, probe: &Probe) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = server
        .http
        .request(method, format!("{}{}", server.base, probe.path));
    if let Some(b) = &probe.bearer {
        req = req.header("Authorization", format!("Bearer {b}"));
    }
    if let Some((content_type, bytes)) = &probe.body {
        req = req.header("Content-Type", content_type).body(bytes.clone());
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap_or_else(|_| panic!("{}: HTTP timeout", probe.what))
        .unwrap_or_else(|e| panic!("{}: {e}", probe.what));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let stream = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    // A stream never ends: its body is not read.
    let text = if stream {
        None
    } else {
        Some(
            tokio::time::timeout(WAIT, res.text())
                .await
                .unwrap()
                .unwrap(),
        )
    };
    Answer {
        status,
        headers,
        text,
    }
}

/// Checks one answer against the operation's document; records the body for the
/// schema check.
fn check(
    op: &Op,
    probe: &Probe,
    a: &Answer,
    problems: &mut Vec<String>,
    observed: &mut Vec<Value>,
) {
    let what = format!("{} [{}] -> {}", op.name(), probe.what, a.status);
    let Some(response) = op.response(a.status) else {
        problems.push(format!(
            "{what}: status {} is not documented (documented: {:?}); body: {}",
            a.status,
            op.statuses(),
            a.text
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>()
        ));
        return;
    };
    let content_type = a
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let Some(text) = &a.text else { return };
    match response["content"].as_object() {
        None => {
            if !text.is_empty() {
                problems.push(format!(
                    "{what}: documented without a body, answered {text:.200}"
                ));
            }
            return;
        }
        Some(content) if !content.contains_key(&content_type) => {
            problems.push(format!(
                "{what}: answered {content_type:?}, documented {:?}",
                content.keys().collect::<Vec<_>>()
            ));
            return;
        }
        Some(_) => {}
    }
    if content_type != "application/json" {
        return;
    }
    let Ok(body) = serde_json::from_str::<Value>(text) else {
        problems.push(format!("{what}: not JSON: {text:.200}"));
        return;
    };
    let schema = response["content"]["application/json"]["schema"].clone();
    if schema["$ref"] == "#/components/schemas/ErrorBody" {
        // The error table: `code` is one of its codes, with this very status.
        let code = serde_json::from_value::<protocol::ErrorCode>(body["error"]["code"].clone());
        match code {
            Ok(code) if code.http_status() == a.status => {}
            Ok(code) => problems.push(format!(
                "{what}: code {} belongs to status {}",
                code.as_str(),
                code.http_status()
            )),
            Err(_) => problems.push(format!("{what}: no error code from the table: {body}")),
        }
        if !body["error"]["message"].is_string() {
            problems.push(format!("{what}: no error message: {body}"));
        }
    }
    if a.status == 429 {
        let retry = a
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if retry.is_none() {
            problems.push(format!("{what}: no Retry-After (seconds) header"));
        }
        if !response["headers"]["Retry-After"].is_object() {
            problems.push(format!("{what}: Retry-After is not documented"));
        }
    }
    observed.push(json!({"what": what, "schema": schema, "body": body}));
}

/// Every operation of the document, sent bad input (and, where the fixture knows
/// one, a valid request): every answer is documented, with its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_bad_input_as_documented() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_low = LOW_BUDGET;
        c.max_bulk_bytes = BULK_BYTES;
        c.max_contacts_bytes = CONTACTS_BYTES;
    })
    .await;
    let doc = served_document(&server).await;
    let fx = fixture(&server).await;
    let mut ops = operations(&doc);
    // Destructive calls last; deleting a device last of all.
    let rank = |o: &Op| match (o.method.as_str(), o.template.as_str()) {
        (_, "/admin/queues/restart") => 2,
        ("DELETE", "/v1/devices/{id}") => 4,
        ("DELETE", _) => 3,
        ("GET", _) => 0,
        _ => 1,
    };
    ops.sort_by_key(|o| (rank(o), o.template.clone()));
    let admin = server.admin_token.clone();
    let over_limit = serde_json::to_vec(&json!({"pad": "x".repeat(OVER_LIMIT)})).unwrap();
    let json_of = |v: &Value| {
        Some((
            "application/json".to_owned(),
            serde_json::to_vec(v).unwrap(),
        ))
    };

    let mut problems: Vec<String> = Vec::new();
    let mut observed: Vec<Value> = Vec::new();
    let mut probes_sent = 0usize;
    // Which statuses each operation answered, for the summary.
    let mut seen: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut store_down: Vec<(Op, Probe)> = Vec::new();
    for op in &ops {
        let schemes = op.schemes();
        let public = PUBLIC.contains(&(op.method.as_str(), op.template.as_str()));
        // A route that forgot to declare its security is probed as its prefix says.
        let undeclared = schemes.is_empty() && !public;
        let tenant =
            schemes.contains("tenant_key") || (undeclared && op.template.starts_with("/v1/"));
        let right = if tenant {
            Some(fx.a.key.clone())
        } else if public {
            None
        } else {
            Some(admin.clone())
        };
        let own = fill(&fx, &op.template, Ids::Own);
        let body = op.json_body().map(|_| valid_body(&fx, op));
        let valid = |what: &str| Probe {
            what: what.into(),
            path: own.clone(),
            bearer: right.clone(),
            body: body.as_ref().and_then(json_of),
        };
        let mut probes: Vec<Probe> = Vec::new();
        if !public {
            let wrong = if tenant {
                admin.clone()
            } else {
                fx.a.key.clone()
            };
            for (what, bearer) in [
                ("no credential", None),
                ("the wrong kind of credential", Some(wrong)),
                ("a device token", Some(fx.a1_token.clone())),
                (
                    "a malformed credential",
                    Some("not-a-credential".to_owned()),
                ),
            ] {
                probes.push(Probe {
                    bearer,
                    ..valid(what)
                });
            }
        }
        if op.json_body().is_some() {
            let with = |what: &str, content_type: &str, bytes: Vec<u8>| Probe {
                body: Some((content_type.to_owned(), bytes)),
                ..valid(what)
            };
            probes.push(with(
                "malformed JSON",
                "application/json",
                b"{\"oops\":".to_vec(),
            ));
            probes.push(with(
                "a body of the wrong shape",
                "application/json",
                b"[1,2,3]".to_vec(),
            ));
            probes.push(with("the wrong content type", "text/plain", b"{}".to_vec()));
            probes.push(with(
                "an over-limit body",
                "application/json",
                over_limit.clone(),
            ));
            if op.json_body() == Some(true) {
                probes.push(Probe {
                    body: None,
                    ..valid("no body")
                });
            }
        }
        if op.template.contains('{') {
            probes.push(Probe {
                path: fill(&fx, &op.template, Ids::Unknown),
                ..valid("unknown ids")
            });
            if tenant {
                probes.push(Probe {
                    path: fill(&fx, &op.template, Ids::Other),
                    ..valid("another tenant's ids")
                });
            }
        }
        for p in op.params("query") {
            let name = p["name"].as_str().unwrap();
            let bad = match p["schema"]["type"]
                .as_str()
                .or(p["schema"]["type"][0].as_str())
            {
                Some("integer") | Some("number") => "not-a-number",
                Some("boolean") => "maybe",
                _ => continue,
            };
            let sep = if own.contains('?') { '&' } else { '?' };
            probes.push(Probe {
                path: format!("{own}{sep}{name}={bad}"),
                ..valid(&format!("`{name}` of the wrong type"))
            });
        }
        probes.push(valid("a valid request"));
        if ["POST", "PUT"].contains(&op.method.as_str()) {
            // A create twice: a conflict where ids are unique (the same address).
            probes.push(valid("the same request again"));
        }
        if op.statuses().iter().any(|s| s == "429") {
            for i in 0..=LOW_BUDGET {
                probes.push(valid(&format!("over budget ({})", i + 1)));
            }
        }
        for probe in &probes {
            let a = send(&server, &op.method, probe).await;
            probes_sent += 1;
            if probe.what == "no credential" && a.status != 401 {
                problems.push(format!(
                    "{} without credentials answered {}, not 401",
                    op.name(),
                    a.status
                ));
            }
            seen.entry(op.name()).or_default().insert(a.status);
            check(op, probe, &a, &mut problems, &mut observed);
        }
        // The send's budget is the one the fixture knows (`LOW_BUDGET`): it must be
        // exhausted by now, and its 429 was checked like every answer above.
        if op.id() == "send_message" {
            let probe = valid("over budget (last)");
            let a = send(&server, &op.method, &probe).await;
            probes_sent += 1;
            if a.status != 429 {
                problems.push(format!(
                    "{} was not rate limited over its budget: {}",
                    op.name(),
                    a.status
                ));
            }
            seen.entry(op.name()).or_default().insert(a.status);
            check(op, &probe, &a, &mut problems, &mut observed);
        }
        store_down.push((op.clone(), valid("the store down")));
    }

    // The store down: every operation's answer is still documented (503 mostly).
    let (s, _) = server
        .call(
            "POST",
            "/admin/test/store",
            Some(&admin),
            Some(json!({"down": true})),
        )
        .await;
    assert_eq!(s, 204);
    let mut unavailable = 0;
    for (op, probe) in &store_down {
        let a = send(&server, &op.method, probe).await;
        probes_sent += 1;
        unavailable += usize::from(a.status == 503);
        seen.entry(op.name()).or_default().insert(a.status);
        check(op, probe, &a, &mut problems, &mut observed);
    }
    let (s, _) = server
        .call(
            "POST",
            "/admin/test/store",
            Some(&admin),
            Some(json!({"down": false})),
        )
        .await;
    assert_eq!(s, 204);
    assert!(
        unavailable >= 10,
        "only {unavailable} operations answered 503 with the store down"
    );

    println!(
        "openapi: {} operations, {probes_sent} requests, {} answers with a JSON body",
        ops.len(),
        observed.len()
    );
    for (op, statuses) in &seen {
        println!("  {op}: answered {statuses:?}");
    }
    let schemas = run_validator(&doc, Some(&observed));
    assert!(
        problems.is_empty() && schemas.is_ok(),
        "{} problems:\n  - {}\n{}",
        problems.len(),
        problems.join("\n  - "),
        schemas.unwrap_or_else(|report| report)
    );
}
