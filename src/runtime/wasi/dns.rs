//! DNS: `wasi:sockets/ip-name-lookup` interposed so that only the names in a component's
//! `network.lookup` grants are resolved. Every other name fails with
//! `permanent-resolver-failure` before any query leaves the host. The addresses a granted name
//! resolves to are still checked, one by one, when the guest connects.
//!
//! wasmtime-wasi has no lookup hook, so this module shadows the interface in the linker with a
//! wrapper that decides first and then delegates to wasmtime-wasi's own implementation.
//!
//! Each lookup runs the system resolver on a host thread of the shared blocking pool, with a
//! socket of its own, until the resolver answers; dropping the guest's stream does not stop
//! it. So lookups count against `limits.sockets`: one in flight takes a place until its
//! stream has an answer or is dropped, and one the guest dropped before it had an answer
//! keeps its place for the rest of the instance's life (its query may still be running).

use std::collections::HashMap;

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup as dns;
use wasmtime_wasi::p2::bindings::sockets::network;
use wasmtime_wasi::p2::{DynPollable, SocketError};

use crate::authz::Request;
use crate::gate::Gate;

/// Who is asking, for the lookup decision, and the lookups that hold a place.
pub(crate) struct LookupGuard {
    pub(crate) gate: Gate,
    /// Streams not yet dropped, by handle, and whether each has had its answer.
    live: HashMap<u32, bool>,
    /// Lookups dropped before their answer: their places are never given back.
    abandoned: usize,
    max: usize,
}

impl LookupGuard {
    pub(crate) fn new(gate: Gate, max: u32) -> Self {
        Self {
            gate,
            live: HashMap::new(),
            abandoned: 0,
            max: max as usize,
        }
    }

    /// Places taken: lookups waiting for an answer, and those abandoned while waiting.
    fn held(&self) -> usize {
        self.live.values().filter(|answered| !**answered).count() + self.abandoned
    }
}

/// wasmtime-wasi's sockets view, with the lookup decision in front of it.
pub(crate) type FilteredDns<'a> = super::sockets::Shadow<'a, &'a mut LookupGuard>;

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
        if self.guard.held() >= self.guard.max {
            return Err(network::ErrorCode::NewSocketLimit.into());
        }
        let stream = dns::Host::resolve_addresses(&mut self.inner, net, name)?;
        self.guard.live.insert(stream.rep(), false);
        Ok(stream)
    }
}

impl dns::HostResolveAddressStream for FilteredDns<'_> {
    fn resolve_next_address(
        &mut self,
        r: Resource<dns::ResolveAddressStream>,
    ) -> Result<Option<network::IpAddress>, SocketError> {
        let rep = r.rep();
        let next = dns::HostResolveAddressStream::resolve_next_address(&mut self.inner, r);
        let waiting =
            matches!(&next, Err(e) if e.downcast_ref() == Some(&network::ErrorCode::WouldBlock));
        if !waiting && let Some(answered) = self.guard.live.get_mut(&rep) {
            *answered = true;
        }
        next
    }

    fn subscribe(
        &mut self,
        r: Resource<dns::ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        dns::HostResolveAddressStream::subscribe(&mut self.inner, r)
    }

    fn drop(&mut self, r: Resource<dns::ResolveAddressStream>) -> wasmtime::Result<()> {
        if self.guard.live.remove(&r.rep()) == Some(false) {
            self.guard.abandoned += 1;
        }
        dns::HostResolveAddressStream::drop(&mut self.inner, r)
    }
}
