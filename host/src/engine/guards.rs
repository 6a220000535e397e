//! The host's own versions of the WASI functions that let a guest consume
//! disk, descriptors, host CPU or trust: they wrap wasmtime-wasi's
//! implementation and are linked over it (linker shadowing).
//!
//! * **Disk**: `write`, `set-size`, `write-via-stream` and
//!   `append-via-stream` charge a file's growth to the tenant's
//!   [`DiskLedger`] before the bytes reach the disk, and refuse a file larger
//!   than `max_file_mib` (`file-too-large`) or a tenant over `disk_mib`
//!   (`insufficient-space`). Creating a file or directory costs one block
//!   (empty files are not free); `unlink-file-at` gives the bytes back.
//! * **Descriptors**: `open-at`, the file-stream constructors and
//!   `create-tcp-socket` refuse (`quota`, `new-socket-limit`) once the call
//!   holds `max_open_files` host descriptors, before the process runs out
//!   and other tenants' calls fail.
//! * **Links**: `symlink-at` and `link-at` are refused (`not-permitted`):
//!   a symlink the guest leaves behind could point a host-side reader into
//!   another tenant's directory, and a hard link could join a read-only
//!   grant to a writable one.
//! * **Random bytes**: one `get-random-bytes` or `get-insecure-random-bytes`
//!   request may ask for at most [`MAX_RANDOM_BYTES`]; more stops the call
//!   with [`ResourceLimitExceeded`] instead of making the host fill a
//!   gigabyte buffer synchronously.

use super::disk::{DiskLedger, DiskRefusal};
use super::state::HostState;
use std::sync::Arc;
use wasmtime::component::{Linker, Resource};
use wasmtime::{Result, StoreContextMut};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode as SocketErrorCode, IpAddressFamily,
};
use wasmtime_wasi::p2::{DynOutputStream, FsResult, OutputStream, Pollable, StreamError};

/// The `wasi:filesystem/types` instance wasmtime-wasi links (the newest 0.2
/// patch release; guests importing older 0.2 releases match it).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// What a new file or directory costs against the disk quota before any
/// byte is written (one block): entries are not free.
pub const ENTRY_BYTES: u64 = super::disk::BLOCK_BYTES;

/// Most bytes one random-bytes request may ask for.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// The `wasi:sockets` instance that creates TCP sockets.
const TCP_CREATE_SOCKET: &str = "wasi:sockets/tcp-create-socket@0.2.12";

/// The `wasi:random` instances wasmtime-wasi links.
const RANDOM: &str = "wasi:random/random@0.2.12";
const INSECURE_RANDOM: &str = "wasi:random/insecure@0.2.12";

/// A guest asked for more of a capped host resource than a call may have.
/// Raised as a trap; the engine reports it as `CallError::ResourceLimit`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("asked for more than {limit} {resource}")]
pub(crate) struct ResourceLimitExceeded {
    /// What it asked for too much of.
    pub(crate) resource: &'static str,
    /// The cap.
    pub(crate) limit: u64,
}

/// What one call may still open and write.
pub(crate) struct FsGuard {
    /// The tenant's disk ledger; `None` when it has no writable grant.
    pub(crate) ledger: Option<Arc<DiskLedger>>,
    /// Open files of this call: descriptors and the file streams made from
    /// them (a stream keeps the file open after its descriptor is dropped).
    /// Some may have been closed since.
    open: Vec<OpenFile>,
    max_open: usize,
    /// Bytes of files this call removed, credited when it ends.
    held: u64,
    /// Why the host refused something during this call, for the call's
    /// result (a guest may turn a refusal into a vague error of its own).
    /// Made on first use: most calls are refused nothing.
    refusals: Option<Refusals>,
}

/// The refusals of one call, shared with the streams it opened: at most
/// eight, repeats not kept.
pub(crate) type Refusals = super::notes::CallNotes<8>;

impl FsGuard {
    /// A guard for one call.
    pub(crate) fn new(ledger: Option<Arc<DiskLedger>>, max_open: usize) -> Self {
        FsGuard {
            ledger,
            open: Vec::new(),
            max_open,
            held: 0,
            refusals: None,
        }
    }

    /// The call's refusal list, made on first use.
    fn refusals(&mut self) -> &Refusals {
        self.refusals.get_or_insert_with(Refusals::default)
    }

    /// The refusals noted during the call, cleared.
    pub(crate) fn take_refusals(&self) -> Vec<String> {
        self.refusals
            .as_ref()
            .map(Refusals::take)
            .unwrap_or_default()
    }

    /// Note an open file (a descriptor or a stream), forgetting any closed
    /// entry its table slot had.
    fn opened(&mut self, file: OpenFile) {
        self.open.retain(|held| held.rep() != file.rep());
        self.open.push(file);
    }

    /// Whether the call may open one more file; forgets closed ones first.
    fn may_open(&mut self, table: &wasmtime::component::ResourceTable) -> bool {
        if self.open.len() < self.max_open {
            return true;
        }
        self.open.retain(|held| held.is_live(table));
        self.open.len() < self.max_open
    }
}

impl Drop for FsGuard {
    fn drop(&mut self) {
        // The call is over and its files are closed: what it removed is free.
        if let Some(ledger) = &self.ledger
            && self.held > 0
        {
            ledger.unhold(self.held);
        }
    }
}

/// Something that holds a host descriptor: an open file, a file stream, a
/// socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenFile {
    Descriptor(u32),
    Input(u32),
    Output(u32),
    Socket(u32),
}

impl OpenFile {
    fn rep(self) -> u32 {
        match self {
            OpenFile::Descriptor(rep)
            | OpenFile::Input(rep)
            | OpenFile::Output(rep)
            | OpenFile::Socket(rep) => rep,
        }
    }

    fn is_live(self, table: &wasmtime::component::ResourceTable) -> bool {
        match self {
            OpenFile::Descriptor(rep) => {
                table.get(&Resource::<Descriptor>::new_borrow(rep)).is_ok()
            }
            OpenFile::Input(rep) => table
                .get(&Resource::<wasmtime_wasi::p2::DynInputStream>::new_borrow(
                    rep,
                ))
                .is_ok(),
            OpenFile::Output(rep) => table
                .get(&Resource::<DynOutputStream>::new_borrow(rep))
                .is_ok(),
            OpenFile::Socket(rep) => table
                .get(&Resource::<wasmtime_wasi::p2::TcpSocket>::new_borrow(rep))
                .is_ok(),
        }
    }
}

/// Turn wasmtime-wasi's result into what the guest receives (or a trap).
fn to_guest<T>(result: FsResult<T>) -> Result<Result<T, ErrorCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error) => error.downcast().map(Err),
    }
}

fn refusal_code(refusal: DiskRefusal) -> ErrorCode {
    match refusal {
        DiskRefusal::Quota { .. } => ErrorCode::InsufficientSpace,
        DiskRefusal::FileTooLarge { .. } => ErrorCode::FileTooLarge,
    }
}

fn refusal_errno(refusal: DiskRefusal) -> i32 {
    match refusal {
        DiskRefusal::Quota { .. } => libc::ENOSPC,
        DiskRefusal::FileTooLarge { .. } => libc::EFBIG,
    }
}

fn borrow(fd: &Resource<Descriptor>) -> Resource<Descriptor> {
    Resource::new_borrow(fd.rep())
}

/// Note a refusal for the call's result, so the operator sees why.
fn log_refusal(state: &mut HostState, what: &str) {
    state.fs.refusals().note(what.to_owned());
}

/// The size of the open file `fd`, or `None` for a directory or on error.
async fn file_size(state: &mut HostState, fd: &Resource<Descriptor>) -> Option<u64> {
    let stat = HostDescriptor::stat(&mut state.filesystem(), borrow(fd))
        .await
        .ok()?;
    Some(stat.size)
}

/// Reserve `bytes` in `ledger`, measuring off the async workers when needed.
async fn reserve(ledger: &Arc<DiskLedger>, bytes: u64) -> Result<(), DiskRefusal> {
    if bytes == 0 {
        return Ok(());
    }
    let lost = |_| {
        Err(DiskRefusal::Quota {
            quota: ledger.quota(),
            used: ledger.used(),
        })
    };
    if ledger.unmeasured() {
        let ledger = ledger.clone();
        return tokio::task::spawn_blocking(move || ledger.reserve(bytes))
            .await
            .unwrap_or_else(lost);
    }
    match ledger.try_reserve(bytes) {
        Ok(()) => Ok(()),
        // Files may have been removed since the last walk: look again
        // (at most once per interval) before refusing.
        Err(_) if ledger.may_remeasure() => {
            let ledger = ledger.clone();
            tokio::task::spawn_blocking(move || {
                ledger.measure();
                ledger.try_reserve(bytes)
            })
            .await
            .unwrap_or_else(lost)
        }
        Err(refusal) => Err(refusal),
    }
}

/// Check and reserve the growth of a file from `size` to `end` bytes.
async fn charge_growth(state: &mut HostState, size: u64, end: u64) -> Result<u64, ErrorCode> {
    let Some(ledger) = state.fs.ledger.clone() else {
        return Ok(0);
    };
    let checked = match ledger.check_file_size(end) {
        Ok(()) => reserve(&ledger, end.saturating_sub(size)).await,
        Err(refusal) => Err(refusal),
    };
    match checked {
        Ok(()) => Ok(end.saturating_sub(size)),
        Err(refusal) => {
            log_refusal(state, &refusal.to_string());
            Err(refusal_code(refusal))
        }
    }
}

fn release(state: &HostState, bytes: u64) {
    if let Some(ledger) = &state.fs.ledger {
        ledger.release(bytes);
    }
}

/// Link the guarded functions over wasmtime-wasi's.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, buffer, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let len = buffer.len() as u64;
                let mut reserved = 0;
                if state.fs.ledger.is_some() {
                    let size = file_size(state, &fd).await.unwrap_or(0);
                    match charge_growth(state, size, offset.saturating_add(len)).await {
                        Ok(bytes) => reserved = bytes,
                        Err(code) => return Ok((Err(code),)),
                    }
                }
                let written = to_guest(
                    HostDescriptor::write(&mut state.filesystem(), fd, buffer, offset).await,
                )?;
                match &written {
                    Err(_) => release(state, reserved),
                    Ok(n) if *n < len => release(state, reserved.min(len - n)),
                    Ok(_) => {}
                }
                Ok((written,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, HostState>, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                // Shrinking gives nothing back here: a stream opened earlier
                // may still believe the file is longer. The next walk of the
                // directories credits it.
                let mut reserved = 0;
                if state.fs.ledger.is_some() {
                    let current = file_size(state, &fd).await.unwrap_or(0);
                    match charge_growth(state, current, size).await {
                        Ok(bytes) => reserved = bytes,
                        Err(code) => return Ok((Err(code),)),
                    }
                }
                let done =
                    to_guest(HostDescriptor::set_size(&mut state.filesystem(), fd, size).await)?;
                if done.is_err() {
                    release(state, reserved);
                }
                Ok((done,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, HostState>, (fd, offset): (Resource<Descriptor>, u64)| {
            Box::new(async move { open_stream(store.data_mut(), fd, Some(offset)).await })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, HostState>, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move { open_stream(store.data_mut(), fd, None).await })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.read-via-stream",
        |mut store: StoreContextMut<'_, HostState>, (fd, offset): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(code) = admit_open(state) {
                    return Ok((Err(code),));
                }
                let opened = to_guest(HostDescriptor::read_via_stream(
                    &mut state.filesystem(),
                    fd,
                    offset,
                ))?;
                if let Ok(stream) = &opened {
                    state.fs.opened(OpenFile::Input(stream.rep()));
                }
                Ok((opened,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.unlink-file-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let size = if state.fs.ledger.is_some() {
                    HostDescriptor::stat_at(
                        &mut state.filesystem(),
                        borrow(&fd),
                        PathFlags::empty(),
                        path.clone(),
                    )
                    .await
                    .ok()
                    .filter(|s| {
                        s.type_ == wasmtime_wasi::p2::bindings::filesystem::types::DescriptorType::RegularFile
                            && s.link_count <= 1
                    })
                    .map(|s| s.size)
                } else {
                    None
                };
                let done =
                    to_guest(HostDescriptor::unlink_file_at(&mut state.filesystem(), fd, path).await)?;
                if let (Ok(()), Some(size)) = (&done, size) {
                    // The call may still hold the file open, and its blocks
                    // stay in use until it closes: credit them when the call
                    // ends, and count them in any walk until then.
                    let bytes = size.saturating_add(ENTRY_BYTES);
                    if let Some(ledger) = &state.fs.ledger {
                        ledger.hold(bytes);
                    }
                    state.fs.held = state.fs.held.saturating_add(bytes);
                }
                Ok((done,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(code) = admit_open(state) {
                    return Ok((Err(code),));
                }
                // A new file costs an entry on disk even while empty: charge
                // it, so a guest cannot fill the disk with empty files.
                let mut entry_charge = 0;
                if open_flags.contains(OpenFlags::CREATE) && state.fs.ledger.is_some() {
                    let exists = HostDescriptor::stat_at(
                        &mut state.filesystem(),
                        borrow(&fd),
                        PathFlags::empty(),
                        path.clone(),
                    )
                    .await
                    .is_ok();
                    if !exists {
                        match charge_growth(state, 0, ENTRY_BYTES).await {
                            Ok(bytes) => entry_charge = bytes,
                            Err(code) => return Ok((Err(code),)),
                        }
                    }
                }
                let opened = to_guest(
                    HostDescriptor::open_at(
                        &mut state.filesystem(),
                        fd,
                        path_flags,
                        path,
                        open_flags,
                        flags,
                    )
                    .await,
                )?;
                match &opened {
                    Ok(descriptor) => state.fs.opened(OpenFile::Descriptor(descriptor.rep())),
                    Err(_) => release(state, entry_charge),
                }
                Ok((opened,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, HostState>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let mut charged = 0;
                if state.fs.ledger.is_some() {
                    match charge_growth(state, 0, ENTRY_BYTES).await {
                        Ok(bytes) => charged = bytes,
                        Err(code) => return Ok((Err(code),)),
                    }
                }
                let done = to_guest(
                    HostDescriptor::create_directory_at(&mut state.filesystem(), fd, path).await,
                )?;
                if done.is_err() {
                    release(state, charged);
                }
                Ok((done,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, HostState>,
         (_fd, _target, _link): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                log_refusal(
                    store.data_mut(),
                    "symbolic links cannot be created in a sandbox (they could point outside the grant)",
                );
                Ok((Err::<(), _>(ErrorCode::NotPermitted),))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, HostState>,
         _: (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                log_refusal(
                    store.data_mut(),
                    "hard links cannot be created in a sandbox",
                );
                Ok((Err::<(), _>(ErrorCode::NotPermitted),))
            })
        },
    )?;
    let mut sockets = linker.instance(TCP_CREATE_SOCKET)?;
    sockets.func_wrap_async(
        "create-tcp-socket",
        |mut store: StoreContextMut<'_, HostState>, (family,): (IpAddressFamily,)| {
            Box::new(async move {
                use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host;
                use wasmtime_wasi::sockets::WasiSocketsView;
                let state = store.data_mut();
                if admit_open(state).is_err() {
                    return Ok((Err(SocketErrorCode::NewSocketLimit),));
                }
                let created = match state.sockets().create_tcp_socket(family) {
                    Ok(socket) => Ok(socket),
                    Err(error) => Err(error.downcast()?),
                };
                if let Ok(socket) = &created {
                    state.fs.opened(OpenFile::Socket(socket.rep()));
                }
                Ok((created,))
            })
        },
    )?;
    let mut random = linker.instance(RANDOM)?;
    random.func_wrap_async(
        "get-random-bytes",
        |mut store: StoreContextMut<'_, HostState>, (len,): (u64,)| {
            Box::new(async move { Ok((random_bytes(store.data_mut(), len, true)?,)) })
        },
    )?;
    random.func_wrap_async(
        "get-random-u64",
        |mut store: StoreContextMut<'_, HostState>, ()| {
            Box::new(async move { Ok((random_u64(store.data_mut(), true)?,)) })
        },
    )?;
    let mut insecure = linker.instance(INSECURE_RANDOM)?;
    insecure.func_wrap_async(
        "get-insecure-random-bytes",
        |mut store: StoreContextMut<'_, HostState>, (len,): (u64,)| {
            Box::new(async move { Ok((random_bytes(store.data_mut(), len, false)?,)) })
        },
    )?;
    insecure.func_wrap_async(
        "get-insecure-random-u64",
        |mut store: StoreContextMut<'_, HostState>, ()| {
            Box::new(async move { Ok((random_u64(store.data_mut(), false)?,)) })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `len` random bytes: from the run's harness for an architecture (so the
/// run can record them), else from the WASI context.
fn random_bytes(state: &mut HostState, len: u64, secure: bool) -> Result<Vec<u8>> {
    check_random(len)?;
    if let Some(harness) = &state.harness {
        let mut bytes = vec![0; len as usize];
        harness.random_bytes(&mut bytes);
        return Ok(bytes);
    }
    if secure {
        use wasmtime_wasi::p2::bindings::random::random::Host;
        state.wasi.random().get_random_bytes(len)
    } else {
        use wasmtime_wasi::p2::bindings::random::insecure::Host;
        state.wasi.random().get_insecure_random_bytes(len)
    }
}

fn random_u64(state: &mut HostState, secure: bool) -> Result<u64> {
    if let Some(harness) = &state.harness {
        let mut bytes = [0; 8];
        harness.random_bytes(&mut bytes);
        return Ok(u64::from_le_bytes(bytes));
    }
    if secure {
        use wasmtime_wasi::p2::bindings::random::random::Host;
        state.wasi.random().get_random_u64()
    } else {
        use wasmtime_wasi::p2::bindings::random::insecure::Host;
        state.wasi.random().get_insecure_random_u64()
    }
}

fn check_random(len: u64) -> Result<()> {
    if len > MAX_RANDOM_BYTES {
        return Err(ResourceLimitExceeded {
            resource: "random bytes in one request",
            limit: MAX_RANDOM_BYTES,
        }
        .into());
    }
    Ok(())
}

/// Refuse another open file when the call holds `max_open_files`.
fn admit_open(state: &mut HostState) -> Result<(), ErrorCode> {
    if state.fs.may_open(&state.table) {
        return Ok(());
    }
    let max = state.fs.max_open;
    log_refusal(
        state,
        &format!("a call may hold at most {max} open files and sockets (limits.max_open_files)"),
    );
    Err(ErrorCode::Quota)
}

/// Open a write or append stream and wrap it so its writes are charged.
async fn open_stream(
    state: &mut HostState,
    fd: Resource<Descriptor>,
    offset: Option<u64>,
) -> Result<(Result<Resource<DynOutputStream>, ErrorCode>,)> {
    let size = if state.fs.ledger.is_some() {
        file_size(state, &fd).await.unwrap_or(0)
    } else {
        0
    };
    // Streams charge without blocking, so learn the usage now: on first use,
    // and again when the tenant is close to its quota (files may have been
    // removed since), at most once per re-measure interval.
    if let Some(ledger) = &state.fs.ledger
        && (ledger.unmeasured()
            || ledger.may_remeasure() && ledger.used() >= ledger.quota() / 10 * 9)
    {
        let ledger = ledger.clone();
        let _ = tokio::task::spawn_blocking(move || ledger.measure()).await;
    }
    if let Err(code) = admit_open(state) {
        return Ok((Err(code),));
    }
    let opened = match offset {
        Some(offset) => HostDescriptor::write_via_stream(&mut state.filesystem(), fd, offset),
        None => HostDescriptor::append_via_stream(&mut state.filesystem(), fd),
    };
    let stream = match to_guest(opened)? {
        Ok(stream) => stream,
        Err(code) => return Ok((Err(code),)),
    };
    state.fs.opened(OpenFile::Output(stream.rep()));
    if let Some(ledger) = state.fs.ledger.clone() {
        let slot = state.table.get_mut(&stream)?;
        let inner = std::mem::replace(slot, Box::new(ClosedStream));
        *slot = Box::new(ChargedStream {
            inner,
            ledger,
            size,
            position: offset,
            refusals: state.fs.refusals().clone(),
        });
    }
    Ok((Ok(stream),))
}

/// A file output stream whose writes are charged to the tenant's ledger.
struct ChargedStream {
    inner: DynOutputStream,
    ledger: Arc<DiskLedger>,
    /// The file's size as this stream knows it.
    size: u64,
    /// Where the next write lands; `None` for an append stream.
    position: Option<u64>,
    refusals: Refusals,
}

#[wasmtime_wasi::async_trait]
impl Pollable for ChargedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for ChargedStream {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        let len = bytes.len() as u64;
        let start = self.position.unwrap_or(self.size);
        let end = start.saturating_add(len);
        let growth = end.saturating_sub(self.size);
        let charged = self
            .ledger
            .check_file_size(end)
            .and_then(|()| self.ledger.try_reserve(growth));
        if let Err(refusal) = charged {
            self.refusals.note(refusal.to_string());
            return Err(StreamError::LastOperationFailed(
                std::io::Error::from_raw_os_error(refusal_errno(refusal)).into(),
            ));
        }
        if let Err(error) = self.inner.write(bytes) {
            self.ledger.release(growth);
            return Err(error);
        }
        self.size = self.size.max(end);
        if let Some(position) = &mut self.position {
            *position = end;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Stands in for a stream while it is being wrapped; never observed.
struct ClosedStream;

#[wasmtime_wasi::async_trait]
impl Pollable for ClosedStream {
    async fn ready(&mut self) {}
}

impl OutputStream for ClosedStream {
    fn write(&mut self, _: bytes::Bytes) -> Result<(), StreamError> {
        Err(StreamError::Closed)
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Err(StreamError::Closed)
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Err(StreamError::Closed)
    }
}
