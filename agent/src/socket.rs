//! The one place the agent's sockets are made. Every socket carries the skip
//! mark (so the capture rules never send the agent's own traffic back to
//! it), TCP keepalive (so a vanished peer does not pin a connection forever,
//! while an idle healthy one stays) and no Nagle delay. Listeners are
//! IP_TRANSPARENT so TPROXYed connections are accepted with the original
//! destination as their local address; dialled sockets can bind a foreign
//! source address so a pod sees the real client.
//!
//! Everything here goes through socket2; no unsafe code.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::limits;

/// The destination a captured connection was sent to, before TPROXY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDst(pub SocketAddr);

/// The address of the peer that opened a connection to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl OrigDst {
    /// For a socket accepted on a transparent listener the local address is
    /// the address the client dialled (TPROXY rewrites nothing in the packet).
    pub fn of(stream: &TcpStream) -> io::Result<Self> {
        stream.local_addr().map(Self)
    }
}

/// How the agent's sockets are made.
#[derive(Clone, Copy, Debug)]
pub struct SocketFactory {
    /// SO_MARK for every socket; `None` where the agent may not set marks
    /// (unit tests without CAP_NET_ADMIN).
    mark: Option<u32>,
    /// Whether listeners are IP_TRANSPARENT (needs CAP_NET_ADMIN).
    transparent: bool,
    connect_timeout: Duration,
    keepalive: Duration,
}

impl SocketFactory {
    /// The factory of a capturing agent: marked, transparent sockets.
    pub fn capturing(mark: u32, connect_timeout: Duration) -> Self {
        Self {
            mark: Some(mark),
            transparent: true,
            connect_timeout,
            keepalive: Duration::from_secs(60),
        }
    }

    /// Plain sockets: for tests and for listeners that capture nothing.
    pub fn plain(connect_timeout: Duration) -> Self {
        Self {
            mark: None,
            transparent: false,
            connect_timeout,
            keepalive: Duration::from_secs(60),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A listener on `addr`; transparent when the factory is.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::from_std(self.listen_std(addr)?)
    }

    /// As [`Self::listen`], without registering with tokio: for listeners
    /// bound before they are served (and handed to the next agent).
    pub fn listen_std(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        self.apply_common(&socket)?;
        if self.transparent {
            set_transparent(&socket, addr.ip())?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    }

    /// Dials `dst`. With `source` and a transparent factory, binds that
    /// (usually foreign) address first, so the server sees it as the client;
    /// the port is left to the kernel. Fails with `TimedOut` after the
    /// connect timeout, and at once when the descriptor budget is spent
    /// (the last descriptors are kept for the servers that must answer).
    pub async fn connect(&self, dst: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
        let socket = match Socket::new(Domain::for_address(dst), Type::STREAM, None) {
            Ok(socket) if limits::dial_over_budget(&socket) => {
                limits::refused("dial", limits::Refusal::Descriptors, Some(dst));
                return Err(limits::budget_exhausted());
            }
            Ok(socket) => socket,
            Err(error) => {
                if limits::is_out_of_descriptors(&error) {
                    limits::refused("dial", limits::Refusal::Descriptors, Some(dst));
                }
                return Err(error);
            }
        };
        self.apply_common(&socket)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(src) = source.filter(|_| self.transparent) {
            set_transparent(&socket, src)?;
            // The same client may reach the same server through several
            // captured connections; each needs its own ephemeral port.
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::new(src, 0).into())?;
        }
        socket.set_nonblocking(true)?;
        let socket = TcpSocket::from_std_stream(socket.into());
        match tokio::time::timeout(self.connect_timeout, socket.connect(dst)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out"),
            )),
        }
    }

    /// Options for a socket returned by `accept`: keepalive and no Nagle
    /// (the mark and transparency are inherited from the listener).
    pub fn accepted(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let keepalive = TcpKeepalive::new().with_time(self.keepalive);
        SockRef::from(stream).set_tcp_keepalive(&keepalive)
    }

    fn apply_common(&self, socket: &Socket) -> io::Result<()> {
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        let keepalive = TcpKeepalive::new().with_time(self.keepalive);
        socket.set_tcp_keepalive(&keepalive)
    }
}

fn set_transparent(socket: &Socket, ip: IpAddr) -> io::Result<()> {
    match ip {
        IpAddr::V4(_) => socket.set_ip_transparent_v4(true),
        IpAddr::V6(_) => socket.set_ip_transparent_v6(true),
    }
}

/// Closes `stream` with a RST instead of a FIN: how the agent tells a
/// client its destination refused, vanished or reset.
pub fn reset(stream: TcpStream) {
    // SO_LINGER with a zero timeout makes close() abort the connection.
    if let Err(error) = SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(%error, "could not set SO_LINGER before reset");
    }
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn plain_factory_listens_and_connects_on_loopback() {
        let factory = SocketFactory::plain(Duration::from_secs(1));
        let listener = factory.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = factory.connect(addr, None).await.unwrap();
            c.write_all(b"hi").await.unwrap();
        });
        let (mut s, _) = listener.accept().await.unwrap();
        assert_eq!(OrigDst::of(&s).unwrap(), OrigDst(addr));
        let mut buf = [0; 2];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        client.await.unwrap();
    }

    #[tokio::test]
    async fn refused_connect_is_reported_as_refused() {
        let factory = SocketFactory::plain(Duration::from_secs(1));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = factory.connect(port, None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn reset_sends_rst() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        reset(server);
        let mut buf = [0; 1];
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
