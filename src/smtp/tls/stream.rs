//! A connection that starts in plaintext and may switch to TLS mid-session (STARTTLS), with
//! either TLS library behind it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Negotiated, TlsVersion};

pub enum Stream<IO> {
    Plain(IO),
    Tls(Box<ServerTls<IO>>),
    /// Only while the TLS handshake owns the inner stream.
    Upgrading,
}

impl<IO> Stream<IO> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

/// The server side of a TLS connection, by the library that made it.
// rustls keeps its buffers inline and OpenSSL behind a pointer; `Stream` boxes either.
#[allow(clippy::large_enum_variant)]
pub enum ServerTls<IO> {
    Modern(tokio_rustls::server::TlsStream<IO>),
    Legacy(tokio_openssl::SslStream<IO>),
}

impl<IO> ServerTls<IO> {
    /// What the handshake agreed on.
    pub fn negotiated(&self) -> Negotiated {
        match self {
            ServerTls::Modern(tls) => {
                let connection = tls.get_ref().1;
                let version = match connection.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
                    // rustls speaks nothing else.
                    _ => TlsVersion::Tls12,
                };
                let cipher = connection
                    .negotiated_cipher_suite()
                    .and_then(|suite| suite.suite().as_str())
                    // rustls names TLS 1.3 suites TLS13_…, IANA (and OpenSSL) TLS_….
                    .map(|name| name.replacen("TLS13_", "TLS_", 1))
                    .unwrap_or_default();
                Negotiated { version, cipher }
            }
            ServerTls::Legacy(tls) => super::legacy::negotiated(tls.ssl()),
        }
    }
}

fn upgrading() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream is being upgraded to TLS",
    )
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerTls::Modern(tls) => Pin::new(tls).poll_read(cx, buf),
            ServerTls::Legacy(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerTls::Modern(tls) => Pin::new(tls).poll_write(cx, buf),
            ServerTls::Legacy(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerTls::Modern(tls) => Pin::new(tls).poll_flush(cx),
            ServerTls::Legacy(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerTls::Modern(tls) => Pin::new(tls).poll_shutdown(cx),
            ServerTls::Legacy(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}
