//! The WASI streams and polling a plugin sees (`wasi:io/streams`, `wasi:io/poll`), driven
//! without tokio on the calling thread.
//!
//! wasmtime-wasi's synchronous bindings run every operation that may wait (a blocking
//! write, dropping a stream, waiting on a pollable) through tokio's `block_on`, which a
//! runtime worker thread may not call: a plugin that printed from a hook made the call
//! panic. Here those operations are polled once, in place: what a plugin can wait on in
//! this sandbox is its own stdout and stderr (always writable, see `stdio`) and an empty
//! stdin, so they are ready at once and hook calls stay plain calls on the connection's
//! thread.
//!
//! What is not ready at once (a timer, a socket) can only come from the imports that
//! make a plugin [`may_wait`]: such plugins are called where blocking is allowed
//! (`block_in_place`), and only there is a future that is not ready handed to tokio.

use super::instance::PluginCtx;
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasData, Linker, Resource, ResourceTable};
use wasmtime::Engine;
use wasmtime::Trap;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams as async_streams;

thread_local! {
    /// Set while a plugin runs where the thread may block (`block_in_place`).
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
    /// When the running call's deadline passes: waiting stops there.
    static UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f`, a call that must not wait past `until` (the epoch deadline only
/// interrupts running code, not a wait in the host).
pub fn waiting_until<R>(until: Instant, f: impl FnOnce() -> R) -> R {
    let before = UNTIL.replace(Some(until));
    let r = f();
    UNTIL.set(before);
    r
}

/// Runs `f` with blocking allowed for the WASI operations it makes.
pub fn allowing_blocking<R>(f: impl FnOnce() -> R) -> R {
    let before = MAY_BLOCK.replace(true);
    let r = f();
    MAY_BLOCK.set(before);
    r
}

/// Whether a component can make a WASI call that waits for something outside the
/// broker: it imports timers to wait on (`subscribe-duration`, `subscribe-instant`),
/// sockets, files or HTTP. Decided once, when the plugin is loaded.
pub fn may_wait(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, import)| {
            let interface = name.split('@').next().unwrap_or(name);
            match interface {
                "wasi:clocks/monotonic-clock" => match import.ty {
                    ComponentItem::ComponentInstance(i) => {
                        i.exports(engine).any(|(f, _)| f.starts_with("subscribe-"))
                    }
                    _ => true,
                },
                _ => ["wasi:sockets/", "wasi:filesystem/", "wasi:http/"]
                    .iter()
                    .any(|p| interface.starts_with(p)),
            }
        })
}

/// Completes a WASI future on this thread: at once if it is ready, through tokio where
/// blocking is allowed, and otherwise not at all (a trap: a plugin whose imports said
/// it would not wait waited).
fn drive<F: Future>(f: F) -> wasmtime::Result<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending if MAY_BLOCK.get() => match UNTIL.get() {
            None => Ok(wasmtime_wasi::runtime::in_tokio(f)),
            Some(until) => {
                let bounded = tokio::time::timeout_at(until.into(), f);
                // Past the deadline: the call fails as one that ran too long would.
                wasmtime_wasi::runtime::in_tokio(bounded).map_err(|_| Trap::Interrupt.into())
            }
        },
        Poll::Pending => Err(wasmtime::format_err!(
            "the plugin waited for I/O that is not ready, on a path that may not block"
        )),
    }
}

fn drive_stream<T>(f: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    drive(f).map_err(StreamError::Trap)?
}

/// Puts these streams and polling in place of wasmtime-wasi's synchronous ones; call
/// after `wasmtime_wasi::p2::add_to_linker_sync`.
pub fn add_to_linker(linker: &mut Linker<PluginCtx>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = (|| {
        streams::add_to_linker::<PluginCtx, Io>(linker, |c| Plain(c.table()))?;
        poll::add_to_linker::<PluginCtx, Io>(linker, |c| Plain(c.table()))
    })();
    linker.allow_shadowing(false);
    added
}

struct Io;

impl HasData for Io {
    type Data<'a> = Plain<'a>;
}

/// The resource table, seen through these bindings.
pub struct Plain<'a>(&'a mut ResourceTable);

impl streams::Host for Plain<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(
            match async_streams::Host::convert_stream_error(self.0, err)? {
                async_streams::StreamError::LastOperationFailed(e) => {
                    streams::StreamError::LastOperationFailed(e)
                }
                async_streams::StreamError::Closed => streams::StreamError::Closed,
            },
        )
    }
}

impl streams::HostOutputStream for Plain<'_> {
    fn drop(&mut self, s: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        drive(async_streams::HostOutputStream::drop(self.0, s))?
    }

    fn check_write(&mut self, s: Resource<DynOutputStream>) -> StreamResult<u64> {
        async_streams::HostOutputStream::check_write(self.0, s)
    }

    fn write(&mut self, s: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        async_streams::HostOutputStream::write(self.0, s, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        s: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        drive_stream(async_streams::HostOutputStream::blocking_write_and_flush(
            self.0, s, bytes,
        ))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        s: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        drive_stream(
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, s, len),
        )
    }

    fn subscribe(
        &mut self,
        s: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.0, s)
    }

    fn write_zeroes(&mut self, s: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        async_streams::HostOutputStream::write_zeroes(self.0, s, len)
    }

    fn flush(&mut self, s: Resource<DynOutputStream>) -> StreamResult<()> {
        async_streams::HostOutputStream::flush(self.0, s)
    }

    fn blocking_flush(&mut self, s: Resource<DynOutputStream>) -> StreamResult<()> {
        drive_stream(async_streams::HostOutputStream::blocking_flush(self.0, s))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        async_streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        drive_stream(async_streams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
    }
}

impl streams::HostInputStream for Plain<'_> {
    fn drop(&mut self, s: Resource<DynInputStream>) -> wasmtime::Result<()> {
        drive(async_streams::HostInputStream::drop(self.0, s))?
    }

    fn read(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        async_streams::HostInputStream::read(self.0, s, len)
    }

    fn blocking_read(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        drive_stream(async_streams::HostInputStream::blocking_read(
            self.0, s, len,
        ))
    }

    fn skip(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostInputStream::skip(self.0, s, len)
    }

    fn blocking_skip(&mut self, s: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        drive_stream(async_streams::HostInputStream::blocking_skip(
            self.0, s, len,
        ))
    }

    fn subscribe(
        &mut self,
        s: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.0, s)
    }
}

impl poll::Host for Plain<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        drive(async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for Plain<'_> {
    fn ready(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<bool> {
        drive(async_poll::HostPollable::ready(self.0, p))?
    }

    fn block(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()> {
        drive(async_poll::HostPollable::block(self.0, p))?
    }

    fn drop(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, p)
    }
}
