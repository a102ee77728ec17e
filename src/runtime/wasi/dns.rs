//! DNS: `wasi:sockets/ip-name-lookup` interposed so that only the names in a component's
//! `network.lookup` grants are resolved. Every other name fails with
//! `permanent-resolver-failure` before any query leaves the host. The addresses a granted name
//! resolves to are still checked, one by one, when the guest connects.
//!
//! wasmtime-wasi has no lookup hook, so this module shadows the interface in the linker with a
//! wrapper that decides first and then delegates to wasmtime-wasi's own implementation.

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup as dns;
use wasmtime_wasi::p2::bindings::sockets::network;
use wasmtime_wasi::p2::{DynPollable, SocketError};

use crate::authz::Request;
use crate::gate::Gate;

/// Who is asking, for the lookup decision.
pub(crate) struct LookupGuard {
    pub(crate) gate: Gate,
}

/// wasmtime-wasi's sockets view, with the lookup decision in front of it.
pub(crate) type FilteredDns<'a> = super::sockets::Shadow<'a, &'a LookupGuard>;

/// Marker for the linker's `HasData`.
pub(crate) struct FilteredDnsData;

impl HasData for FilteredDnsData {
    type Data<'a> = FilteredDns<'a>;
}

impl dns::Host for FilteredDns<'_> {
    fn resolve_addresses(
        &mut self,
        net: Resource<network::Network>,
        name: String,
    ) -> Result<Resource<dns::ResolveAddressStream>, SocketError> {
        // Decide on the name exactly as the resolver will read it (IDNA, percent-decoding),
        // and hand the resolver that same name. An address literal needs no DNS query; its
        // use is checked at connect.
        let name = match url::Host::parse(&name) {
            Ok(url::Host::Domain(domain)) => {
                let request = Request::Lookup {
                    name: domain.clone(),
                };
                if !self.guard.gate.decide_blocking(&request).allowed {
                    return Err(network::ErrorCode::PermanentResolverFailure.into());
                }
                domain
            }
            Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => name,
            Err(_) => return Err(network::ErrorCode::InvalidArgument.into()),
        };
        dns::Host::resolve_addresses(&mut self.inner, net, name)
    }
}

impl dns::HostResolveAddressStream for FilteredDns<'_> {
    fn resolve_next_address(
        &mut self,
        r: Resource<dns::ResolveAddressStream>,
    ) -> Result<Option<network::IpAddress>, SocketError> {
        dns::HostResolveAddressStream::resolve_next_address(&mut self.inner, r)
    }

    fn subscribe(
        &mut self,
        r: Resource<dns::ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        dns::HostResolveAddressStream::subscribe(&mut self.inner, r)
    }

    fn drop(&mut self, r: Resource<dns::ResolveAddressStream>) -> wasmtime::Result<()> {
        dns::HostResolveAddressStream::drop(&mut self.inner, r)
    }
}
