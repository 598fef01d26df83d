//! The local cluster's transport, apart from the scheduler: the listener,
//! the handshake that keeps strangers out, and the frames both sides
//! exchange, under one size policy. It talks to the scheduler only through
//! the scheduler's event channel.

pub(crate) mod accept;
pub(crate) mod frame;
pub(crate) mod handshake;

#[cfg(test)]
mod fuzz;
