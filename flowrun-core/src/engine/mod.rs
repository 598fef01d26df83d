//! The engine: turns task calls into task runs. A submitted run is
//! [`driver`]n to its final state through the flow's runner; a direct call
//! runs on the caller's thread ([`direct`]); runs submitted by registry key
//! with serialized arguments take the same path ([`encoded`]). Options are
//! combined once per run ([`resolve`]), failures retried by one policy
//! ([`retry`]), and bodies run inside small future [`adapters`].

pub(crate) mod adapters;
pub(crate) mod direct;
pub(crate) mod driver;
pub(crate) mod encoded;
pub(crate) mod resolve;
pub(crate) mod retry;
