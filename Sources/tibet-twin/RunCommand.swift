import ArgumentParser
import Appliance
import Logging
#if canImport(Glibc)
import Glibc
#endif

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the appliance: poll the PLCs, follow the twin, serve the permit coils, keep the audit chain.",
        discussion: """
            Runs until SIGTERM or SIGINT: then every permit drops to 0 at once and is served as 0 \
            for interlock.stop_grace_ms before the listener closes, and the audit chain is closed \
            with a `stopped` token. SIGHUP re-reads the config and maps: an invalid set is refused \
            (the running one stays); a valid one keeps unchanged devices and re-arms changed ones. \
            Under systemd (Type=notify) it reports READY=1 after the first full evaluation and pings \
            the watchdog from its evaluation tick. Logs go to stderr (the journal under systemd).

            Exit codes: 0 stopped by SIGTERM/SIGINT; 1 a part failed while running; 2 the config, a \
            map, the key or a listener is wrong at start (one line per problem; nothing was served).
            """
    )

    @Option(help: "The appliance config (see docs/config.md).")
    var config: String

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            CLIOut.errorLine("tibet-twin run: --log-level \(logLevel): expected one of trace, debug, info, notice, warning, error, critical")
            throw ExitCode(2)
        }
        // A file-size limit (RLIMIT_FSIZE) must turn into a failed audit write (EFBIG: the store
        // goes unhealthy, permits block with AUDIT, it recovers when writing works again), not
        // kill the process; a peer closing a socket must not either.
        signal(SIGXFSZ, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        // Bounded memory under overload: fewer malloc arenas keep less freed memory resident.
        MallocTuning.limitArenas()
        LoggingSystem.bootstrap { LineLogHandler(label: $0, level: level) }
        let runtime: ApplianceRuntime
        do {
            runtime = try await ApplianceRuntime.start(configPath: config)
        } catch {
            for line in error.lines { CLIOut.errorLine("tibet-twin run: \(line)") }
            throw ExitCode(2)
        }
        let ports = runtime.ports
        // One machine-readable line for scripts and tests (ports matter when the config says 0).
        CLIOut.outputLine("serving interlock=\(ports.interlock) http=\(ports.http) twin_tcp=\(ports.twinTCP.map(String.init).joined(separator: ","))")
        do {
            try await runtime.run()
        } catch {
            CLIOut.errorLine("tibet-twin run: \(error)")
            throw ExitCode(1)
        }
    }
}
