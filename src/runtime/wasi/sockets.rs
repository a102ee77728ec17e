//! `limits.sockets`: each TCP or UDP socket a guest creates holds a descriptor of the host
//! process, so one instance may hold only so many at once. Past the limit, creating a socket
//! fails with `new-socket-limit`, an error the guest can handle, and the host's own
//! descriptors stay free for everything else it serves.
//!
//! wasmtime-wasi has no hook for socket creation, so this module shadows the two
//! `create-*-socket` functions with wrappers that count first and then delegate. A socket is
//! live while its handle is still in the store's table with its type, which is checked
//! whenever a new one is asked for, so a dropped socket frees its place at once. Connections
//! accepted on a listening socket are not created here: they are bounded by the per-instance
//! handle limit instead (see `docs/policy.md`).

use std::collections::HashSet;

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

/// The sockets one store has created and may still hold.
#[derive(Debug)]
pub(crate) struct SocketCount {
    tcp: HashSet<u32>,
    udp: HashSet<u32>,
    max: usize,
}

impl SocketCount {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            tcp: HashSet::new(),
            udp: HashSet::new(),
            max: max as usize,
        }
    }

    /// Whether one more socket fits. Sockets the guest has dropped are forgotten only when the
    /// count looks full, so creating a socket below the limit does not scan them all.
    fn room(&mut self, table: &ResourceTable) -> bool {
        if self.tcp.len() + self.udp.len() < self.max {
            return true;
        }
        self.tcp
            .retain(|&rep| table.get(&Resource::<TcpSocket>::new_borrow(rep)).is_ok());
        self.udp
            .retain(|&rep| table.get(&Resource::<UdpSocket>::new_borrow(rep)).is_ok());
        self.tcp.len() + self.udp.len() < self.max
    }
}

/// wasmtime-wasi's sockets view with a guard in front of it: the socket count here, the
/// lookup decision in `dns`.
pub(crate) struct Shadow<'a, G> {
    pub inner: WasiSocketsCtxView<'a>,
    pub guard: G,
}

/// wasmtime-wasi's sockets view, with the count in front of socket creation.
pub(crate) type CountedSockets<'a> = Shadow<'a, &'a mut SocketCount>;

/// Marker for the linker's `HasData`.
pub(crate) struct CountedSocketsData;

impl HasData for CountedSocketsData {
    type Data<'a> = CountedSockets<'a>;
}

impl tcp_create_socket::Host for CountedSockets<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        if !self.guard.room(self.inner.table) {
            return Err(ErrorCode::NewSocketLimit.into());
        }
        let socket = tcp_create_socket::Host::create_tcp_socket(&mut self.inner, family)?;
        self.guard.tcp.insert(socket.rep());
        Ok(socket)
    }
}

impl udp_create_socket::Host for CountedSockets<'_> {
    async fn create_udp_socket(
        &mut self,
        family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        if !self.guard.room(self.inner.table) {
            return Err(ErrorCode::NewSocketLimit.into());
        }
        let socket = udp_create_socket::Host::create_udp_socket(&mut self.inner, family).await?;
        self.guard.udp.insert(socket.rep());
        Ok(socket)
    }
}

// The shadowed interfaces use `wasi:sockets/network`'s types, so their bindings ask for it too;
// it is wasmtime-wasi's, unchanged.
impl<G: Send> network::Host for Shadow<'_, G> {
    fn convert_error_code(&mut self, e: SocketError) -> wasmtime::Result<network::ErrorCode> {
        network::Host::convert_error_code(&mut self.inner, e)
    }

    fn network_error_code(
        &mut self,
        e: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<network::ErrorCode>> {
        network::Host::network_error_code(&mut self.inner, e)
    }
}

impl<G: Send> network::HostNetwork for Shadow<'_, G> {
    fn drop(&mut self, r: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.inner, r)
    }
}
