//! The guest build harness works: `tests/guests/` builds for wasm32-wasip2 into real
//! components, and one of them runs under wasmtime with WASI and prints what it should.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Host {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

#[tokio::test]
async fn hello_guest_builds_into_a_component_and_runs() -> wasmtime::Result<()> {
    let path = common::guests::guest("hello");
    let bytes = std::fs::read(&path)?;
    assert!(
        common::guests::is_component(&bytes),
        "{} is not a component",
        path.display()
    );

    let engine = Engine::new(&Config::new())?;
    let component = Component::new(&engine, &bytes)?;
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let stdout = MemoryOutputPipe::new(4096);
    let ctx = WasiCtx::builder()
        .stdout(stdout.clone())
        .args(&["hello", "x"])
        .build();
    let mut store = Store::new(
        &engine,
        Host {
            ctx,
            table: ResourceTable::new(),
        },
    );
    let cmd =
        wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &linker)
            .await?;
    let status = cmd.wasi_cli_run().call_run(&mut store).await?;
    assert_eq!(status, Ok(()));
    let out = String::from_utf8(stdout.contents().to_vec())?;
    assert_eq!(
        out,
        "hello from a capgate guest; argv = [\"hello\", \"x\"]\n"
    );
    Ok(())
}
