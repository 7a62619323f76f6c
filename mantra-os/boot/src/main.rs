#![no_std]
#![no_main]
use uefi::prelude::*;

#[entry]
fn main() -> Status {
    Status::SUCCESS
}
