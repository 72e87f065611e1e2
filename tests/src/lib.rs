//! Test harness: starts and stops real corral processes.
