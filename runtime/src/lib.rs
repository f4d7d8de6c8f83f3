//! placeholder

pub mod smtp;
