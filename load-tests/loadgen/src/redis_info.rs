//! Commands Redis itself executed (`INFO commandstats`, with `--redis-port`): the
//! servers' own counter covers the commands they send, this covers everything the
//! Redis of a cluster did (bus publishes, budget scripts, cache calls), whoever sent it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for the connection and the answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The command loadgen sends; it is left out of the counts.
pub const OWN_COMMAND: &str = "info";

/// Calls per command (`publish`, `evalsha`, `client|setname`, …) of the Redis on
/// 127.0.0.1:`port`.
pub async fn command_calls(port: u16) -> Result<BTreeMap<String, u64>> {
    tokio::time::timeout(TIMEOUT, read_commandstats(port))
        .await
        .map_err(|_| anyhow!("no INFO answer from 127.0.0.1:{port} within {TIMEOUT:?}"))?
}

async fn read_commandstats(port: u16) -> Result<BTreeMap<String, u64>> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to Redis on 127.0.0.1:{port}"))?;
    conn.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .await
        .context("writing INFO")?;
    // The answer is one bulk string: `$<len>\r\n<len bytes>\r\n`.
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).await.context("reading INFO")?;
        if n == 0 {
            bail!("Redis closed the connection before the INFO answer was complete");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(text) = bulk_string(&buf)? {
            return Ok(parse_commandstats(text));
        }
    }
}

/// The payload of a complete RESP bulk string in `buf`, `None` while incomplete.
fn bulk_string(buf: &[u8]) -> Result<Option<&str>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let header = std::str::from_utf8(&buf[..eol]).context("INFO answer header")?;
    let Some(len) = header.strip_prefix('$') else {
        bail!("unexpected INFO answer: {header}");
    };
    let len: usize = len
        .parse()
        .with_context(|| format!("INFO answer: {header}"))?;
    let start = eol + 2;
    if buf.len() < start + len {
        return Ok(None);
    }
    let text = std::str::from_utf8(&buf[start..start + len]).context("INFO answer text")?;
    Ok(Some(text))
}

/// `cmdstat_<name>:calls=<n>,usec=…` lines → name → calls.
fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, fields) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let text = "# Commandstats\r\n\
            cmdstat_publish:calls=120,usec=300,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_client|setname:calls=3,usec=1,usec_per_call=0.33\r\n\
            cmdstat_info:calls=2,usec=90\r\n";
        let m = parse_commandstats(text);
        assert_eq!(m["publish"], 120);
        assert_eq!(m["client|setname"], 3);
        assert_eq!(m[OWN_COMMAND], 2);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn waits_for_the_whole_bulk_string() {
        assert_eq!(bulk_string(b"$5\r\nab").expect("ok"), None);
        assert_eq!(bulk_string(b"$5\r\nabcde\r\n").expect("ok"), Some("abcde"));
        assert!(bulk_string(b"-ERR no\r\n").is_err());
    }
}
