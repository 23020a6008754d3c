//! The WebSocket framing (RFC 6455) of one connection on its raw TCP socket, with
//! buffers that hold only what is in flight: the input and output buffers are
//! released once empty, so an idle connection keeps no
//! buffer at all (actix-http's dispatcher keeps 8 KiB + 8 KiB for a connection's life).
//! Frame parsing and encoding are actix-http's (`ws::Parser`).

use std::io;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser, ProtocolError};
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Room made in the input buffer for one read.
const READ_CHUNK: usize = 4096;
/// An empty buffer above this capacity is released; below it, kept for the next frame.
const KEEP_CAPACITY: usize = 512;

/// One complete message (or control frame) from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A text message (fragments joined); not yet checked for UTF-8.
    Text(BytesMut),
    /// A binary message (not part of the protocol).
    Binary,
    /// A ping with its payload, to be answered with a pong.
    Ping(BytesMut),
    /// A pong (an answer to the server's heartbeat).
    Pong,
    /// The client's close frame.
    Close(Option<CloseReason>),
}

/// Why the client's input cannot be read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputError {
    /// A frame or a fragmented message over the size limit.
    TooLarge,
    /// Not a valid WebSocket stream (unmasked frame, bad opcode, bad fragmentation).
    Protocol,
}

/// A server-side WebSocket over a TCP socket.
pub struct Socket {
    io: TcpStream,
    input: BytesMut,
    output: BytesMut,
    max_frame: usize,
    max_message: usize,
    /// A fragmented message being joined: whether it is text, and its payload so far.
    partial: Option<(bool, BytesMut)>,
}

impl Socket {
    /// A socket after the handshake; `read_ahead` is what the HTTP layer had already
    /// read past the upgrade request (the client's first frames, if it did not wait).
    pub fn new(io: TcpStream, read_ahead: &[u8], max_frame: usize, max_message: usize) -> Self {
        Socket {
            io,
            input: BytesMut::from(read_ahead),
            output: BytesMut::new(),
            max_frame,
            max_message,
            partial: None,
        }
    }

    /// Resolves when the socket has bytes (or an end) to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Resolves when the socket can take bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    /// Reads what the socket has, without waiting; `Ok(false)` when the client closed
    /// its side. Reads into the input buffer's spare room (nothing to zero); a buffer
    /// left empty afterwards is released by [`Socket::next_message`].
    pub fn read_available(&mut self) -> io::Result<bool> {
        self.input.reserve(READ_CHUNK);
        match self.io.try_read_buf(&mut self.input) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The next complete message in what was read, if there is one.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, InputError> {
        loop {
            if declared_length(&self.input).is_some_and(|n| n > self.max_frame as u64) {
                return Err(InputError::TooLarge);
            }
            let parsed = match Parser::parse(&mut self.input, true, self.max_frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    release_if_empty(&mut self.input);
                    return Ok(None);
                }
                Err(ProtocolError::Overflow) => return Err(InputError::TooLarge),
                Err(_) => return Err(InputError::Protocol),
            };
            let (fin, op, payload) = parsed;
            let payload = payload.unwrap_or_default();
            match op {
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(InputError::Protocol);
                    }
                    let text = op == OpCode::Text;
                    if !fin {
                        self.partial = Some((text, payload));
                        continue;
                    }
                    return Ok(Some(if text {
                        Incoming::Text(payload)
                    } else {
                        Incoming::Binary
                    }));
                }
                OpCode::Continue => {
                    let Some((_, joined)) = self.partial.as_mut() else {
                        return Err(InputError::Protocol);
                    };
                    if joined.len() + payload.len() > self.max_message {
                        return Err(InputError::TooLarge);
                    }
                    joined.extend_from_slice(&payload);
                    if fin {
                        let (text, joined) = self.partial.take().unwrap_or_default();
                        return Ok(Some(if text {
                            Incoming::Text(joined)
                        } else {
                            Incoming::Binary
                        }));
                    }
                }
                OpCode::Ping => return Ok(Some(Incoming::Ping(payload))),
                OpCode::Pong => return Ok(Some(Incoming::Pong)),
                OpCode::Close => {
                    let reason = Parser::try_parse_close_payload(&payload)
                        .map_err(|_| InputError::Protocol)?;
                    return Ok(Some(Incoming::Close(reason)));
                }
                OpCode::Bad => return Err(InputError::Protocol),
            }
        }
    }

    /// Queues a text frame.
    pub fn queue_text(&mut self, text: &str) {
        Parser::write_message(&mut self.output, text, OpCode::Text, true, false);
    }

    /// Queues a ping.
    pub fn queue_ping(&mut self, payload: &[u8]) {
        Parser::write_message(&mut self.output, payload, OpCode::Ping, true, false);
    }

    /// Queues a pong answering a ping.
    pub fn queue_pong(&mut self, payload: &[u8]) {
        Parser::write_message(&mut self.output, payload, OpCode::Pong, true, false);
    }

    /// Queues a close frame.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        let reason = CloseReason {
            code: CloseCode::from(code),
            description: (!reason.is_empty()).then(|| reason.to_owned()),
        };
        Parser::write_close(&mut self.output, Some(reason), false);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.output.len()
    }

    /// Writes what the socket takes now, without waiting; the number of bytes written.
    pub fn write_available(&mut self) -> io::Result<usize> {
        let mut written = 0;
        while !self.output.is_empty() {
            match self.io.try_write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.advance(n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        release_if_empty(&mut self.output);
        Ok(written)
    }

    /// Writes everything queued, waiting for the socket (the caller bounds the time).
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.pending() > 0 {
            self.io.writable().await?;
            self.write_available()?;
        }
        Ok(())
    }

    /// Flushes and closes the sending side, then reads (and drops) what the client
    /// still sends until it closes too: closing a socket with unread input resets the
    /// connection, and the client would lose the frames it has not read yet.
    pub async fn finish(&mut self, flush_for: Duration, linger_for: Duration) {
        if !matches!(
            tokio::time::timeout(flush_for, self.flush()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        if self.io.shutdown().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(linger_for, async {
            let mut chunk = [0u8; 512];
            loop {
                if self.io.readable().await.is_err() {
                    return;
                }
                match self.io.try_read(&mut chunk) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// Replaces an empty buffer holding more than [`KEEP_CAPACITY`] with an unallocated one.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::new();
    }
}

/// The payload length the next frame's header declares, once its length bytes are in:
/// an over-long frame is refused before its payload is buffered.
fn declared_length(buf: &[u8]) -> Option<u64> {
    let len7 = buf.get(1)? & 0x7F;
    match len7 {
        126 => Some(u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]))),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some(u64::from_be_bytes(bytes))
        }
        n => Some(u64::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::declared_length;

    #[test]
    fn declared_lengths_of_the_three_header_forms() {
        assert_eq!(declared_length(&[0x81]), None);
        assert_eq!(declared_length(&[0x81, 0x85]), Some(5));
        assert_eq!(declared_length(&[0x81, 0xFE, 0x01]), None);
        assert_eq!(declared_length(&[0x81, 0xFE, 0x01, 0x00]), Some(256));
        let mut long = vec![0x81, 0xFF];
        long.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(declared_length(&long), Some(1 << 40));
        assert_eq!(declared_length(&long[..9]), None);
    }
}
