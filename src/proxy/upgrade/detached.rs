//! [`Detached`]: the stand-in stream left in Pingora's session once moat has taken an
//! upgraded connection over. Pingora still finishes the session it thinks it has (and
//! shuts its stream down); every operation on this one ends at once and touches nothing.

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream with nothing behind it: reads end, writes fail, shutdown does nothing.
#[derive(Debug, Default)]
pub struct Detached;

impl AsyncRead for Detached {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Detached {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the connection was taken over by an upgrade relay",
        )))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Detached {
    async fn shutdown(&mut self) {}
}

impl UniqueID for Detached {
    fn id(&self) -> UniqueIDType {
        UniqueIDType::default()
    }
}

impl Ssl for Detached {}

impl GetTimingDigest for Detached {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Detached {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Detached {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

impl Peek for Detached {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_end_and_writes_fail() {
        let mut d = Detached;
        let mut buf = [0u8; 8];
        assert_eq!(d.read(&mut buf).await.unwrap(), 0);
        assert!(d.write_all(b"x").await.is_err());
        assert!(AsyncWriteExt::shutdown(&mut d).await.is_ok());
    }
}
