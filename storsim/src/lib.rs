//! storsim: load a Storport miniport `.sys` into a Linux process and drive it through emulated
//! storport.sys, ntoskrnl.exe and I/O-manager behaviour, with Driver-Verifier-style checks.
