//! `limits.sockets`: each TCP or UDP socket a guest creates holds a descriptor of the host
//! process, so one instance may hold only so many at once. Past the limit, creating a socket
//! fails with `new-socket-limit`, an error the guest can handle, and the host's own
//! descriptors stay free for everything else it serves.
//!
//! wasmtime-wasi has no hook for socket creation, so this module shadows the two
//! `create-*-socket` functions with wrappers that count first and then delegate. A socket is
//! live while its handle is still in the store's table with its type, which is checked
//! whenever a new one is asked for, so a dropped socket frees its place at once.
//!
//! Connections accepted on a listening socket are sockets too: `wasi:sockets/tcp` is shadowed
//! whole (every method but `listen` and `accept` delegates unchanged), and `accept` takes a
//! place first. Without one it fails with `new-socket-limit`. A listener takes two places:
//! its own, and one for the connection wasmtime-wasi accepts ahead of the guest (when the
//! guest waits on the listener, one connection is taken from the backlog and held ready); so
//! the descriptors a guest makes the host hold never exceed `limits.sockets`, and further
//! peers wait in the kernel's backlog.

use std::collections::HashSet;

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::{self, ShutdownType};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

/// The sockets one store has created and may still hold.
#[derive(Debug)]
pub(crate) struct SocketCount {
    tcp: HashSet<u32>,
    udp: HashSet<u32>,
    /// Listening sockets: each counts twice (itself, and the connection accepted ahead).
    listening: HashSet<u32>,
    max: usize,
}

impl SocketCount {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            tcp: HashSet::new(),
            udp: HashSet::new(),
            listening: HashSet::new(),
            max: max as usize,
        }
    }

    /// Whether one more socket fits. Sockets the guest has dropped are forgotten only when the
    /// count looks full, so creating a socket below the limit does not scan them all.
    fn room(&mut self, table: &ResourceTable) -> bool {
        if self.held() < self.max {
            return true;
        }
        let tcp_alive = |&rep: &u32| table.get(&Resource::<TcpSocket>::new_borrow(rep)).is_ok();
        self.tcp.retain(tcp_alive);
        self.listening.retain(tcp_alive);
        self.udp
            .retain(|&rep| table.get(&Resource::<UdpSocket>::new_borrow(rep)).is_ok());
        self.held() < self.max
    }

    /// Places taken, counting a listener twice.
    fn held(&self) -> usize {
        self.tcp.len() + self.udp.len() + self.listening.len()
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
        // A new socket at a dropped listener's handle is not listening.
        self.guard.listening.remove(&socket.rep());
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

/// Methods of `tcp-socket` that need no count: each passes straight to wasmtime-wasi's.
macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&mut self, this: Resource<TcpSocket>, $($arg: $ty),*) -> $ret {
            tcp::HostTcpSocket::$name(&mut self.inner, this, $($arg),*)
        })*
    };
}

impl tcp::Host for CountedSockets<'_> {}

impl tcp::HostTcpSocket for CountedSockets<'_> {
    fn accept(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(
        Resource<TcpSocket>,
        Resource<DynInputStream>,
        Resource<DynOutputStream>,
    )> {
        if !self.guard.room(self.inner.table) {
            return Err(ErrorCode::NewSocketLimit.into());
        }
        let accepted = tcp::HostTcpSocket::accept(&mut self.inner, this)?;
        self.guard.listening.remove(&accepted.0.rep());
        self.guard.tcp.insert(accepted.0.rep());
        Ok(accepted)
    }

    async fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        tcp::HostTcpSocket::start_bind(&mut self.inner, this, network, local_address).await
    }

    async fn start_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        // The socket already holds one place; listening needs a second.
        let rep = this.rep();
        if !self.guard.listening.contains(&rep) && !self.guard.room(self.inner.table) {
            return Err(ErrorCode::NewSocketLimit.into());
        }
        tcp::HostTcpSocket::start_listen(&mut self.inner, this).await?;
        self.guard.listening.insert(rep);
        Ok(())
    }

    delegate! {
        finish_bind() -> SocketResult<()>;
        start_connect(network: Resource<Network>, remote: IpSocketAddress) -> SocketResult<()>;
        finish_connect()
            -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)>;
        finish_listen() -> SocketResult<()>;
        local_address() -> SocketResult<IpSocketAddress>;
        remote_address() -> SocketResult<IpSocketAddress>;
        is_listening() -> wasmtime::Result<bool>;
        address_family() -> wasmtime::Result<IpAddressFamily>;
        set_listen_backlog_size(value: u64) -> SocketResult<()>;
        keep_alive_enabled() -> SocketResult<bool>;
        set_keep_alive_enabled(value: bool) -> SocketResult<()>;
        keep_alive_idle_time() -> SocketResult<u64>;
        set_keep_alive_idle_time(value: u64) -> SocketResult<()>;
        keep_alive_interval() -> SocketResult<u64>;
        set_keep_alive_interval(value: u64) -> SocketResult<()>;
        keep_alive_count() -> SocketResult<u32>;
        set_keep_alive_count(value: u32) -> SocketResult<()>;
        hop_limit() -> SocketResult<u8>;
        set_hop_limit(value: u8) -> SocketResult<()>;
        receive_buffer_size() -> SocketResult<u64>;
        set_receive_buffer_size(value: u64) -> SocketResult<()>;
        send_buffer_size() -> SocketResult<u64>;
        set_send_buffer_size(value: u64) -> SocketResult<()>;
        subscribe() -> wasmtime::Result<Resource<DynPollable>>;
        shutdown(how: ShutdownType) -> SocketResult<()>;
        drop() -> wasmtime::Result<()>;
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
