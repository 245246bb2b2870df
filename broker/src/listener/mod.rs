//! Listeners turn sockets into byte streams for the connection code. Nothing above this
//! module knows which transport a client used.

pub mod tcp;
