//! The bootable zos image and zos as PID 1.
//!
//! - [`build`]: `zos image build`: the Debian kernel, and an initramfs ([`cpio`]) whose
//!   `/init` is the zos binary, with the modules ([`kmod`]) and tools the node needs; no shell.
//! - [`iso`]: `zos image iso`: a bootable ISO (ISOLINUX for BIOS, GRUB for UEFI).
//! - [`pxe`]: `zos image pxe`: what a network boot server serves (iPXE script, PXELINUX).
//! - [`init`]: PID 1: mounts, modules, the command line ([`cmdline`]), the network
//!   ([`dhcp`]), the boot medium, then the node as a supervised child; clean power-off.
//! - [`release`]: signed release bundles, pinned keys per network, A/B slots with a health
//!   gate and rollback (docs/image.md); [`bootstrap`]: PID 1 running the right slot and
//!   rolling back a failed trial.

pub mod bootstrap;
pub mod build;
pub mod cmdline;
pub mod cpio;
pub mod dhcp;
pub mod init;
pub mod iso;
pub mod kmod;
pub mod pxe;
pub mod release;
