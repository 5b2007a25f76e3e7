//! libvirt's own storage pool events, for the publisher: a pool stopped, undefined, defined or
//! started by someone else (`virsh pool-destroy`, virt-manager) is put right at once instead of
//! at the next periodic check. The `virt` crate does not wrap these events, so this module
//! registers them with `virt::sys` and runs libvirt's default event loop on a thread of its
//! own; each event (and each (re)connection, after which events may have been missed) becomes
//! one message on a channel that the publisher's loop selects on.

use std::ffi::{c_int, c_void};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, warn};
use virt::sys;

/// Something may have changed in libvirt's pools: re-sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolsChanged;

/// Starts following libvirt's storage pool lifecycle events on `uri` (None: libvirt's default
/// URI). The thread ends when the receiver is dropped. Fails only if libvirt's event loop
/// cannot be set up; a libvirtd that is down is retried every 2 s.
pub fn follow(uri: Option<String>) -> Result<UnboundedReceiver<PoolsChanged>, String> {
    virt::event::event_register_default_impl()
        .map_err(|e| format!("cannot set up libvirt's event loop: {e}"))?;
    let (tx, rx) = unbounded_channel();
    std::thread::Builder::new()
        .name("libvirt-events".into())
        .spawn(move || run(uri, tx))
        .map_err(|e| format!("cannot start the libvirt event thread: {e}"))?;
    Ok(rx)
}

/// A timer callback that does nothing: the timer only makes the event loop return every
/// second, so that a dead connection or a dropped receiver is noticed.
unsafe extern "C" fn tick(_timer: c_int, _opaque: *mut c_void) {}

fn run(uri: Option<String>, tx: UnboundedSender<PoolsChanged>) {
    // SAFETY: a plain function pointer and no opaque data to free.
    let timer = unsafe { sys::virEventAddTimeout(1000, Some(tick), std::ptr::null_mut(), None) };
    if timer < 0 {
        warn!("libvirt events: cannot add a timer; following the periodic check only");
        return;
    }
    while !tx.is_closed() {
        let conn = match virt::connect::Connect::open(uri.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                debug!("libvirt events: cannot connect: {e}; retrying in 2 s");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        // Boxed for the callback; freed by libvirt (free_sender) when deregistered.
        let opaque = Box::into_raw(Box::new(tx.clone())) as *mut c_void;
        // SAFETY: libvirt declares every storage pool event callback with the generic type and
        // calls it with the lifecycle signature for VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE (its
        // VIR_STORAGE_POOL_EVENT_CALLBACK macro is this cast); `opaque` is a boxed sender that
        // lives until `free_sender`.
        let id = unsafe {
            let cb: sys::virConnectStoragePoolEventLifecycleCallback = Some(lifecycle);
            sys::virConnectStoragePoolEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE as c_int,
                std::mem::transmute::<
                    sys::virConnectStoragePoolEventLifecycleCallback,
                    sys::virConnectStoragePoolEventGenericCallback,
                >(cb),
                opaque,
                Some(free_sender),
            )
        };
        if id < 0 {
            // SAFETY: not registered, so libvirt will not free it: ours again.
            drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<PoolsChanged>) });
            warn!(
                "libvirt events: cannot register for pool events: {}; following the periodic check only",
                virt::error::Error::last_error()
            );
            break;
        }
        debug!("libvirt events: following storage pool events");
        // Events may have been missed while not connected.
        let _ = tx.send(PoolsChanged);
        // SAFETY: a valid connection.
        while !tx.is_closed() && unsafe { sys::virConnectIsAlive(conn.as_ptr()) } == 1 {
            if let Err(e) = virt::event::event_run_default_impl() {
                warn!("libvirt events: event loop: {e}");
                break;
            }
        }
        // SAFETY: a valid connection and the id it returned; the sender is freed by libvirt.
        unsafe { sys::virConnectStoragePoolEventDeregisterAny(conn.as_ptr(), id) };
        drop(conn);
        if !tx.is_closed() {
            debug!("libvirt events: connection lost; reconnecting");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // SAFETY: the timer added above.
    unsafe { sys::virEventRemoveTimeout(timer) };
}

unsafe extern "C" fn lifecycle(
    _conn: sys::virConnectPtr,
    _pool: sys::virStoragePoolPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) {
    debug!(event, "libvirt storage pool event");
    // SAFETY: `opaque` is the boxed sender registered with this callback, alive until
    // `free_sender`.
    let tx = unsafe { &*(opaque as *const UnboundedSender<PoolsChanged>) };
    let _ = tx.send(PoolsChanged);
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: the box made for the registration, freed once by libvirt.
    drop(unsafe { Box::from_raw(opaque as *mut UnboundedSender<PoolsChanged>) });
}
