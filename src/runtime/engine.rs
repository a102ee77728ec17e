//! The wasmtime engine with capgate's settings, and the WASI linker with every adapter in
//! front of wasmtime-wasi's own implementation.
//!
//! The linker is built once per host. wasmtime-wasi's filesystem, name lookup, socket
//! creation and TCP sockets (for `accept`) are shadowed here by the adapters of [`super::wasi`], each of which decides
//! through its store's [`Gate`](crate::gate::Gate); nothing else is shadowed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use super::error::RunError;
use super::store::{self, MAX_WASM_STACK, State, TICK};
use super::wasi::{dns::FilteredDnsData, fs::GuardedFsData, sockets::CountedSocketsData};

/// An engine with epoch interruption, fuel and a bounded wasm stack, caching compiled code in
/// `cache` if given (which must already have passed the privacy check), and with the pooling
/// allocator sized for `pool` instances if given.
pub(super) fn engine(cache: Option<&Path>, pool: Option<u32>) -> Result<Engine, RunError> {
    let mut c = Config::new();
    c.epoch_interruption(true)
        .consume_fuel(true)
        .max_wasm_stack(MAX_WASM_STACK);
    if let Some(slots) = pool {
        c.allocation_strategy(pooling(slots));
    }
    if let Some(dir) = cache {
        let mut cc = wasmtime::CacheConfig::new();
        cc.with_directory(dir);
        let cache = wasmtime::Cache::new(cc).map_err(|e| {
            RunError::engine(&format!("compilation cache in `{}`", dir.display()), e)
        })?;
        c.cache(Some(cache));
    }
    Engine::new(&c).map_err(|e| RunError::engine("the engine", e))
}

/// The pooling allocator for `slots` component instances at once: memories, tables, instances
/// and fiber stacks are reserved once and reused, instead of mapped and unmapped for every
/// instance (which costs a TLB shootdown on every core each time). The per-instance bounds
/// are those the limiter enforces anyway (`super::limits`), so a component that runs under
/// the on-demand allocator runs under this one; a slot's contents are reset by wasmtime before
/// reuse, so nothing of one instance reaches the next.
fn pooling(slots: u32) -> wasmtime::PoolingAllocationConfig {
    use super::limits::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLE_ELEMENTS, MAX_TABLES};
    let per_component = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let mut p = wasmtime::PoolingAllocationConfig::new();
    p.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(4))
        .total_stacks(slots)
        .max_core_instances_per_component(per_component(MAX_INSTANCES))
        .max_memories_per_component(per_component(MAX_MEMORIES))
        .max_tables_per_component(per_component(MAX_TABLES))
        .max_memories_per_module(per_component(MAX_MEMORIES))
        .max_tables_per_module(per_component(MAX_TABLES))
        .table_elements(MAX_TABLE_ELEMENTS)
        // A 32-bit memory's whole range: `limits.memory` is enforced by the limiter.
        .max_memory_size(1 << 32)
        // Resetting a slot with `madvise` costs a TLB shootdown on every core; batching
        // spreads one over several slots.
        .decommit_batch_size(16);
    if pagemap_scan() {
        // The kernel can say which pages an instance dirtied: those (up to 16 MiB of each
        // memory) are zeroed in place and stay mapped for the next instance, with no
        // shootdown. No more stays resident than concurrent instances could use anyway.
        p.linear_memory_keep_resident(16 << 20)
            .pagemap_scan(wasmtime::Enabled::Yes)
            .table_keep_resident(64 << 10);
    }
    p
}

/// Whether the kernel has the `PAGEMAP_SCAN` ioctl (Linux 6.7 and later). Without it, keeping
/// memory resident would mean zeroing all of it on every reset.
fn pagemap_scan() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    cfg!(target_os = "linux") && (major, minor) >= (6, 7)
}

/// The WASI linker: wasmtime-wasi and wasi:http, with capgate's adapters in front of the
/// filesystem, name lookup and socket creation.
pub(super) fn linker(engine: &Engine) -> Result<Linker<State>, RunError> {
    use wasmtime_wasi::p2::bindings::{filesystem, sockets};
    let setup = |e: wasmtime::Error| RunError::engine("the WASI linker", e);
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(setup)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(setup)?;
    linker.allow_shadowing(true);
    // Name lookup: each name decided (see `wasi::dns`).
    sockets::ip_name_lookup::add_to_linker::<State, FilteredDnsData>(
        &mut linker,
        store::filtered_dns,
    )
    .map_err(setup)?;
    // Socket creation: counted against `limits.sockets` (see `wasi::sockets`).
    sockets::tcp_create_socket::add_to_linker::<State, CountedSocketsData>(
        &mut linker,
        store::counted_sockets,
    )
    .map_err(setup)?;
    sockets::udp_create_socket::add_to_linker::<State, CountedSocketsData>(
        &mut linker,
        store::counted_sockets,
    )
    .map_err(setup)?;
    // Accepting a connection: counted against `limits.sockets` too.
    sockets::tcp::add_to_linker::<State, CountedSocketsData>(&mut linker, store::counted_sockets)
        .map_err(setup)?;
    // Every filesystem call: decided per path (see `wasi::fs`).
    filesystem::types::add_to_linker::<State, GuardedFsData>(&mut linker, store::guarded_fs)
        .map_err(setup)?;
    filesystem::preopens::add_to_linker::<State, GuardedFsData>(&mut linker, store::guarded_fs)
        .map_err(setup)?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// The thread that advances an engine's epoch; it stops when the last handle is dropped (or
/// the engine is).
pub(super) struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts the thread that advances `engine`'s epoch every tick.
pub(super) fn start_ticker(engine: &Engine) -> Result<Arc<Ticker>, RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (e, s) = (engine.weak(), stop.clone());
    std::thread::Builder::new()
        .name("capgate-epoch".into())
        .spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                match e.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(|e| RunError::engine("the epoch thread", e))?;
    Ok(Arc::new(Ticker(stop)))
}
