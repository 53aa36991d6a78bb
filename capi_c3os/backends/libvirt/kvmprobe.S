/* The KVM boot check's guest: a 512-byte boot sector (SeaBIOS loads it at 0x7c00).
 * It does what a kernel does first -- protected mode, paging, long mode -- then runs
 * 100M loop iterations (work emulation is slow at) and writes 64 MiB of memory (a kernel
 * decompressing itself; broken nested KVM is slow at that), and powers the VM off through the
 * ACPI PM1a control port SeaBIOS sets up at 0x604 (i440fx/q35). A VM that is gone
 * before the deadline ran all of it.
 *
 * Rebuild (kvmprobe.py holds the bytes; tests/unit/test_libvirt_kvmprobe.py checks
 * they match this file):
 *   as --64 -o p.o kvmprobe.S && ld -m elf_x86_64 -Ttext 0x7c00 --oformat binary -e _start -o p.bin p.o
 */
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl gdt_desc
    mov %cr0, %eax
    or $1, %eax                 /* protected mode */
    mov %eax, %cr0
    ljmpl $0x08, $pm32
    .code32
pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x1000, %edi           /* page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD) */
    xor %eax, %eax
    mov $0xc00, %ecx
    rep stosl
    movl $0x2003, 0x1000
    movl $0x3003, 0x2000
    mov $0x3000, %edi           /* identity-map the first GiB with 2 MiB pages */
    mov $0x83, %eax
2:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    cmp $0x4000, %edi
    jne 2b
    mov $0x1000, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax        /* paging: long mode */
    mov %eax, %cr0
    ljmp $0x18, $lm64
    .code64
lm64:
    mov $100000000, %rcx
4:  dec %rcx
    jnz 4b
    mov $0x200000, %rdi         /* write 64 MiB from 2 MiB on */
    mov $0x800000, %rcx
    mov $0x5a5a5a5a5a5a5a5a, %rax
    rep stosq
    mov $0x604, %dx             /* PM1a_CNT: SLP_EN with S5 -> power off */
    mov $0x2000, %ax
    out %ax, %dx
1:  hlt
    jmp 1b
    .p2align 3
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
    .quad 0x00af9a000000ffff    /* 0x18: 64-bit code */
gdt_desc:
    .word gdt_desc - gdt - 1
    .long gdt
    .org 510
    .word 0xaa55
