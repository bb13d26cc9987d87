//! Every `unsafe` call of the crate, each where a checked need has no safe route.
//!
//! - [`release_freed_memory`]: neither allocator has another way to give freed pages back.
//! - [`offer_session`]: BoringSSL's `SSL_set_session`, the only way to resume an upstream TLS
//!   session (`tls::relay_client`); `boring` marks it `unsafe` because the session must come
//!   from the same `SslContext`.
//! - [`shed_handshake_config`]: BoringSSL's `SSL_set_shed_handshake_config`, which `boring`
//!   does not wrap; it frees each connection's copy of its configuration (credential, verify
//!   parameters, lists) once the handshake is done, memory an idle link otherwise holds for
//!   its whole life.

use boring::error::ErrorStack;
use boring::ssl::{SslRef, SslSessionRef};

/// Asks the allocators to return freed pages to the system now.
#[allow(unsafe_code)]
pub(crate) fn release_freed_memory() {
    // SAFETY: both calls take no pointers and only rearrange the allocator's own free lists,
    // under its own locks; `mi_collect(false)` collects the calling thread's heap and the
    // process-wide arenas, never another thread's live blocks.
    unsafe {
        libmimalloc_sys::mi_collect(false);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        libc::malloc_trim(0);
    }
}

/// Offers `session` in the next handshake of `ssl`, which must not have started (BoringSSL
/// aborts the process otherwise); a session the server declines costs a full handshake.
///
/// `session` must come from `ssl`'s own context: the relay client keeps one session cache per
/// context and takes sessions only from it, and configures `ssl` fresh from that context
/// just before (`tls::relay_client::RelayClient::configure`).
#[allow(unsafe_code)]
pub(crate) fn offer_session(ssl: &mut SslRef, session: &SslSessionRef) -> Result<(), ErrorStack> {
    // SAFETY: the caller's contract above: same context, handshake not started.
    unsafe { ssl.set_session(session) }
}

/// Lets BoringSSL free `ssl`'s configuration when its handshake completes (on a client, only if
/// renegotiation is off, BoringSSL's default). Nothing Gatehouse reads after a handshake is
/// configuration: the peer's certificate, verify result, SNI and ALPN are the handshake's
/// results, kept on the connection and its session.
#[allow(unsafe_code)]
pub(crate) fn shed_handshake_config(ssl: &mut SslRef) {
    use foreign_types::ForeignTypeRef;
    // SAFETY: `ssl` is a live `SSL` borrowed mutably for the call; the function only sets a
    // flag on its configuration, which BoringSSL itself frees later, after the handshake.
    unsafe { pingora_core::tls::ssl_sys::SSL_set_shed_handshake_config(ssl.as_ptr(), 1) }
}
