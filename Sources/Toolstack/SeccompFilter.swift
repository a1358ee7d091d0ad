#if canImport(Glibc)
import Glibc
#endif
import CSeccomp
import LaunchMeasurement

/// A domain's allowlist (`SyscallAllowlist`) compiled by libseccomp into a
/// classic BPF program, default action SECCOMP_RET_KILL_PROCESS, for
/// `bwrap --seccomp FD`.
public enum SeccompFilter {
    /// The BPF program for `rules`, written into a pipe: the read end is
    /// returned (close-on-exec; hand it to the child by dup2). bwrap reads
    /// it to the end, so the program must fit the pipe buffer.
    public static func compile(_ rules: [SyscallAllowlist.Rule]) throws(ToolstackError) -> Int32 {
        guard let context = seccomp_init(SCMP_ACT_KILL_PROCESS) else { throw ToolstackError("seccomp_init failed") }
        defer { seccomp_release(context) }
        for rule in rules {
            let number = seccomp_syscall_resolve_name(rule.name)
            guard number != __NR_SCMP_ERROR else { throw ToolstackError("seccomp: unknown system call \(rule.name)") }
            let result: Int32
            if let argument = rule.argumentEquals {
                let comparison = scmp_arg_cmp(arg: argument.index, op: SCMP_CMP_EQ, datum_a: argument.value, datum_b: 0)
                result = seccomp_rule_add_exact_array(context, SCMP_ACT_ALLOW, number, 1, [comparison])
            } else {
                result = seccomp_rule_add_exact_array(context, SCMP_ACT_ALLOW, number, 0, nil)
            }
            // -EEXIST: the same rule twice in one list, harmless.
            guard result == 0 || result == -EEXIST else {
                throw ToolstackError("seccomp: cannot allow \(rule.name): \(systemMessage(-result))")
            }
        }
        let ends = try closeOnExecPipe()
        let exported = seccomp_export_bpf(context, ends[1])
        close(ends[1])
        guard exported == 0 else {
            close(ends[0])
            throw ToolstackError("seccomp_export_bpf: \(systemMessage(-exported))")
        }
        return ends[0]
    }
}
