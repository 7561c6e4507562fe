/* clawfarm KVM probe: a 512-byte boot sector (see src/driver/accel.rs).
 * Prints "CLAWFARM-KVM-PROBE R" from real mode, "P" from protected mode, "W" after writing
 * 16 MiB of memory, "L\n" from long mode on COM1, then halts. Build (GNU binutils):
 *   as --64 -o probe.o kvm-probe.S && ld -Ttext 0x7c00 --oformat binary -o probe.bin probe.o
 * The bytes are embedded as PROBE_BOOT_SECTOR (trailing zeros and the 55 aa signature are
 * added at run time). */
