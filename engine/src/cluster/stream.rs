//! A node link's socket, plain TCP or TLS over it (`tls.rs`): [`OutStream`] for a writer
//! (`link.rs`), [`InStream`] for a reader (`net.rs`). Both are blocking; the socket's
//! timeouts apply to TLS as to plain TCP: every socket write of TLS records goes through
//! [`flush_tls`], so a stalled write ends with the write timeout's error, as a plain one
//! does (rustls's own `Stream::write` would swallow that error once).

use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};

use super::tls::{flush_tls, ClientStream, ServerStream};

/// An outgoing link's connection (the writer's).
pub(crate) enum OutStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, the writer as the client.
    Tls(Box<ClientStream>),
}

impl OutStream {
    /// The socket under it.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            OutStream::Plain(s) => s,
            OutStream::Tls(s) => &s.sock,
        }
    }

    /// Fails if the peer closed the connection (or reset it, or refused it in TLS): the
    /// peer never writes on a link (past a TLS reader's accept), so anything readable
    /// means end of stream or an error. Does not block.
    pub(crate) fn peer_still_there(&mut self) -> io::Result<()> {
        self.tcp().set_nonblocking(true)?;
        let r = match self {
            OutStream::Plain(s) => match s.peek(&mut [0u8; 1]) {
                Ok(0) => Err(closed()),
                Ok(_) => Err(io::Error::other("the peer wrote on a link (it never should)")),
                Err(e) => Err(e),
            },
            OutStream::Tls(s) => tls_peer_still_there(s),
        };
        self.tcp().set_nonblocking(false)?;
        match r {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            r => r,
        }
    }

    /// Ends the connection; after a hang-up (`graceful`) a TLS link first says so
    /// (close_notify, within the write timeout).
    pub(crate) fn close(&mut self, graceful: bool) {
        if let (OutStream::Tls(s), true) = (&mut *self, graceful) {
            s.conn.send_close_notify();
            let _ = flush_tls(s);
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

/// Reads what a TLS reader sent: nothing but alerts or close_notify is expected. Returns
/// `WouldBlock` when nothing more is there.
fn tls_peer_still_there(s: &mut ClientStream) -> io::Result<()> {
    loop {
        match s.conn.read_tls(&mut s.sock) {
            Ok(0) => return Err(closed()),
            Ok(_) => {
                let state = s
                    .conn
                    .process_new_packets()
                    .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                if state.peer_has_closed() {
                    return Err(closed());
                }
                if state.plaintext_bytes_to_read() > 0 {
                    return Err(io::Error::other("the peer wrote on a link (it never should)"));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(ErrorKind::ConnectionAborted, "closed by the peer")
}

impl Write for OutStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Plain: one vectored socket write. TLS: rustls takes what fits its buffer (64 KiB),
    /// encrypts it, and every record is written before this returns.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            OutStream::Plain(s) => s.write_vectored(bufs),
            OutStream::Tls(s) => {
                let n = s.conn.writer().write_vectored(bufs)?;
                flush_tls(s)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            OutStream::Plain(_) => Ok(()),
            OutStream::Tls(s) => flush_tls(s),
        }
    }
}

/// An incoming link's connection (the reader's).
pub(crate) enum InStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, the reader as the server, handshake done and accept written.
    Tls(Box<ServerStream>),
}

impl InStream {
    /// The socket under it.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            InStream::Plain(s) => s,
            InStream::Tls(s) => &s.sock,
        }
    }
}

impl Read for InStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            InStream::Plain(s) => s.read(buf),
            // Ok(0) after the writer's close_notify; an error if it just closed the socket.
            InStream::Tls(s) => s.read(buf),
        }
    }
}
