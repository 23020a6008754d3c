//! Replays the seed corpora of the `client_frame` and `rest_bodies` fuzz targets
//! (`fuzz/corpus/<target>/`) and every crash ever found (`fuzz/regressions/<target>/`)
//! through the fuzz targets' own checks, on the stable toolchain; plus named hostile
//! inputs (deep nesting, huge numbers, invalid UTF-8, oversized fields) that must be
//! refused with an error, never a panic or unbounded work.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use switchboard_protocol::fuzzing::{self, REST_BODIES};
use switchboard_protocol::{ClientFrame, ErrorCode};

/// Every file under `fuzz/<kind>/<target>/`, except dotfiles such as `.gitkeep`.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

/// Runs `check` on every file, naming the file when it panics.
fn replay(files: &[PathBuf], check: fn(&[u8])) {
    for file in files {
        let data = std::fs::read(file).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{} failed: {why:?}", file.display());
        }
    }
}

#[test]
fn client_frame_seed_corpus_replays() {
    let files = inputs("corpus", "client_frame");
    assert!(files.len() >= 20, "seed corpus is missing: {files:?}");
    replay(&files, fuzzing::client_frame);
}

#[test]
fn client_frame_regressions_replay() {
    replay(
        &inputs("regressions", "client_frame"),
        fuzzing::client_frame,
    );
}

#[test]
fn rest_bodies_seed_corpus_replays() {
    let files = inputs("corpus", "rest_bodies");
    assert!(files.len() >= 10, "seed corpus is missing: {files:?}");
    replay(&files, fuzzing::rest_bodies);
}

#[test]
fn rest_bodies_regressions_replay() {
    replay(&inputs("regressions", "rest_bodies"), fuzzing::rest_bodies);
}

#[test]
fn every_rest_body_accepts_its_seed() {
    // Each decoder must be reached by at least one valid seed, or the fuzzer starts
    // that type from nothing.
    let seeds: Vec<Vec<u8>> = inputs("corpus", "rest_bodies")
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    for (name, decode) in REST_BODIES {
        assert!(
            seeds.iter().any(|s| decode(s).is_ok()),
            "no seed in fuzz/corpus/rest_bodies decodes as {name}"
        );
    }
}

fn refused(text: &str, what: &str) -> switchboard_protocol::FrameError {
    match fuzzing::client_frame_text(text) {
        Ok(frame) => panic!("{what}: accepted as {frame:?}"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{what}");
            e
        }
    }
}

const DEEP: usize = 100_000;

#[test]
fn deeply_nested_json_is_an_error() {
    let open = "[".repeat(DEEP);
    let cases = [
        (
            "unclosed body",
            format!(r#"{{"type":"send","id":"n","to":"+15550002","body":{{"a":{open}"#),
        ),
        (
            "unclosed body array",
            format!(r#"{{"type":"send","id":"n","to":"+15550002","body":{open}"#),
        ),
        (
            "closed body array",
            format!(
                r#"{{"type":"send","id":"n","to":"+15550002","body":{open}{}}}"#,
                "]".repeat(DEEP)
            ),
        ),
        (
            "nested id",
            format!(r#"{{"type":"ping","id":{open}{}}}"#, "]".repeat(DEEP)),
        ),
        (
            "nested message_ids",
            format!(
                r#"{{"type":"receipt","status":"read","message_ids":{open}{}}}"#,
                "]".repeat(DEEP)
            ),
        ),
        (
            "nested objects",
            format!(
                r#"{{"type":"ping","id":"o","x":{}"#,
                r#"{"a":"#.repeat(DEEP)
            ),
        ),
        ("top level", open.clone()),
    ];
    for (what, text) in cases {
        refused(&text, what);
    }
    for (name, decode) in REST_BODIES {
        assert!(decode(open.as_bytes()).is_err(), "{name}");
        let body = format!(r#"{{"to":"+15550002","body":{open}"#);
        assert!(decode(body.as_bytes()).is_err(), "{name}: unclosed body");
    }
}

/// A body nested 100,000 levels deep but well formed: `body` is kept as a raw value,
/// which serde_json skips without its recursion limit, so the decoder bounds the depth
/// itself (`validate::check_body`): recipients whose JSON parser has a depth limit
/// (serde_json's `Value`: 128) could not read it.
#[test]
fn deeply_nested_but_closed_body_is_an_error() {
    let text = format!(
        r#"{{"type":"send","id":"n","to":"+15550002","body":{{"a":{}{}}}}}"#,
        "[".repeat(DEEP),
        "]".repeat(DEEP)
    );
    refused(&text, "closed nested body");
}

#[test]
fn huge_numbers_are_an_error() {
    for (what, text) in [
        (
            "after_seq 1e400",
            r#"{"type":"sync","id":"h","after_seq":1e400}"#.to_owned(),
        ),
        (
            "after_seq over u64",
            r#"{"type":"sync","id":"h","after_seq":99999999999999999999}"#.to_owned(),
        ),
        (
            "after_seq float",
            r#"{"type":"sync","id":"h","after_seq":1.5}"#.to_owned(),
        ),
        (
            "after_seq negative",
            r#"{"type":"sync","id":"h","after_seq":-1}"#.to_owned(),
        ),
        (
            "limit over u32",
            r#"{"type":"sync","id":"h","limit":4294967296}"#.to_owned(),
        ),
        (
            "limit 1e400",
            r#"{"type":"sync","id":"h","limit":1e400}"#.to_owned(),
        ),
        (
            "10,000 digits",
            format!(
                r#"{{"type":"sync","id":"h","after_seq":{}}}"#,
                "9".repeat(10_000)
            ),
        ),
        ("id a number", r#"{"type":"ping","id":1e400}"#.to_owned()),
    ] {
        refused(&text, what);
    }
    // Where the id survives the salvage, it is echoed.
    let e = refused(
        r#"{"type":"sync","id":"h","after_seq":99999999999999999999}"#,
        "u64",
    );
    assert_eq!(e.id.as_deref(), Some("h"));
    for (name, text) in [
        ("CreateToken", r#"{"ttl_secs":1e400}"#),
        ("CreateToken", r#"{"ttl_secs":99999999999999999999}"#),
        ("CreateToken", r#"{"ttl_secs":-1}"#),
        ("CreateTenant", r#"{"name":1e400}"#),
        ("CreateDevice", r#"{"address":99999999999999999999}"#),
        ("Contacts", r#"{"contacts":[1e400]}"#),
        ("CreateGroup", r#"{"name":"g","members":[1e400]}"#),
        ("GroupMembers", r#"{"members":[1e999999]}"#),
        ("SendMessage", r#"{"to":1e400,"body":{}}"#),
    ] {
        assert!(decoder(name)(text.as_bytes()).is_err(), "{name}: {text}");
    }
    // A huge number inside a raw `body` is kept as written (it is never evaluated).
    assert!(decoder("SendMessage")(br#"{"to":"+15550002","body":{"n":1e400}}"#).is_ok());
}

/// The `id` of a frame refused for a huge number elsewhere is still echoed, so the
/// client can match the error: `salvage_id` reads only `id` and skips the rest.
#[test]
fn huge_number_elsewhere_keeps_the_id() {
    for text in [
        r#"{"type":"sync","id":"h","after_seq":1e400}"#.to_owned(),
        format!(
            r#"{{"type":"sync","id":"h","after_seq":{}}}"#,
            "9".repeat(400)
        ),
        format!(
            r#"{{"type":"sync","id":"h","after_seq":"x","pad":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
    ] {
        assert_eq!(refused(&text, &text).id.as_deref(), Some("h"), "{text}");
    }
}

#[test]
fn invalid_utf8_is_an_error() {
    // A WebSocket text frame is UTF-8 by definition (the transport refuses others), so
    // the decoder only sees it through lossy conversion: a replacement character in a
    // string is data, outside a string it is a syntax error.
    for bytes in [
        &b"\xff"[..],
        b"{\"type\":\"ping\"\xff}",
        b"\xef\xbb\xbf{\"type\":\"ping\"}",
        b"{\"type\":\"ping\",\"id\":\"a\"}\xc3",
    ] {
        let text = String::from_utf8_lossy(bytes);
        refused(&text, &format!("{bytes:?}"));
        fuzzing::client_frame(bytes);
    }
    // REST bodies arrive as bytes: invalid UTF-8 in a field the type reads (the raw
    // `body` included) is refused. (serde_json skips unknown fields without checking
    // their UTF-8; what is skipped never reaches the server, so that is harmless.)
    for (name, bytes) in [
        ("CreateTenant", &b"{\"name\":\"\xff\"}"[..]),
        (
            "CreateDevice",
            b"{\"address\":\"+1555\xc3\x28\",\"name\":\"x\"}",
        ),
        ("CreateDevice", b"{\"address\":\"+1555\",\"name\":\"\xc3\"}"),
        (
            "Contacts",
            b"{\"contacts\":[{\"address\":\"\xed\xa0\x80\"}]}",
        ),
        (
            "CreateGroup",
            b"{\"name\":\"g\",\"members\":[\"\xf8\x88\x80\x80\x80\"]}",
        ),
        ("GroupMembers", b"{\"members\":[\"+1555\xff\"]}"),
        (
            "SendMessage",
            b"{\"to\":\"+15550002\",\"body\":{\"t\":\"\xff\"}}",
        ),
        (
            "SendMessage",
            b"{\"to\":\"+15550002\",\"body\":{\"\xff\":1}}",
        ),
        (
            "SendMessage",
            b"{\"id\":\"\xff\",\"to\":\"+15550002\",\"body\":{}}",
        ),
    ] {
        assert!(decoder(name)(bytes).is_err(), "{name}: {bytes:?}");
        fuzzing::rest_bodies(bytes);
    }
}

fn decoder(name: &str) -> fuzzing::BodyDecoder {
    REST_BODIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| *d)
        .unwrap_or_else(|| panic!("no decoder {name}"))
}

#[test]
fn oversized_fields_are_an_error() {
    let big = "x".repeat(1 << 20);
    for (what, text, echoed) in [
        (
            "1 MiB id",
            format!(r#"{{"type":"ping","id":"{big}"}}"#),
            false,
        ),
        (
            "65-byte id",
            format!(r#"{{"type":"ping","id":"{}"}}"#, "é".repeat(33)),
            false,
        ),
        (
            "1 MiB id, undecodable",
            format!(r#"{{"type":"sync","id":"{big}","after_seq":"x"}}"#),
            false,
        ),
        (
            "1 MiB to",
            format!(
                r#"{{"type":"send","id":"t","to":"+1{}","body":{{}}}}"#,
                "5".repeat(1 << 20)
            ),
            true,
        ),
        (
            "1 MiB group",
            format!(r#"{{"type":"send","id":"t","group":"{big}","body":{{}}}}"#),
            true,
        ),
        (
            "1 MiB type",
            format!(r#"{{"type":"{big}","id":"t"}}"#),
            true,
        ),
        (
            "1 MiB priority",
            format!(
                r#"{{"type":"send","id":"t","to":"+15550002","body":{{}},"priority":"{big}"}}"#
            ),
            true,
        ),
        (
            "1001 receipt ids",
            format!(
                r#"{{"type":"receipt","id":"t","status":"read","message_ids":[{}"m"]}}"#,
                r#""m","#.repeat(1000)
            ),
            true,
        ),
    ] {
        let e = refused(&text, what);
        assert_eq!(e.id.is_some(), echoed, "{what}: {:?}", e.id);
        // What is echoed back is bounded by what came in.
        assert!(
            e.message.len() <= 2 * text.len() + 200,
            "{what}: {} bytes",
            e.message.len()
        );
    }
    let max = format!(
        r#"{{"type":"receipt","id":"t","status":"read","message_ids":[{}"m"]}}"#,
        r#""m","#.repeat(999)
    );
    assert!(matches!(
        fuzzing::client_frame_text(&max),
        Ok(ClientFrame::Receipt { message_ids, .. }) if message_ids.len() == 1000
    ));
}
