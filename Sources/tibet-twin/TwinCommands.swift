import Appliance
import ArgumentParser
import TibetTwin

#if canImport(Glibc)
import Glibc
#endif

/// `tibet-twin keygen OUT`: an Ed25519 key pair for a twin (or the guard's audit key).
struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write an Ed25519 key pair: OUT (private key, mode 0600) and OUT.pub.",
        discussion: """
            The files hold one base64 line of the 32 raw key bytes. A map names the twin's public \
            key as `twin_key: keys/<device>.pub`; the twin signs its lines with the private key \
            (`tibet-twin sign --key OUT`). Never overwrites an existing file.

            Exit codes: 0 written; 1 OUT or OUT.pub exists or cannot be written; 2 usage.
            """
    )

    @Argument(help: "Path of the private key file; the public key is written to OUT.pub.")
    var out: String

    func run() throws {
        do {
            try KeyFiles.generate(out: out)
        } catch {
            twinCommandError("tibet-twin keygen: \(error)")
            throw ExitCode(1)
        }
        print("wrote \(out) (private, mode 0600) and \(out).pub (public)")
    }
}

/// `tibet-twin sign --key K`: signs feed lines, stdin to stdout.
struct SignCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Sign twin feed lines: stdin to stdout, each with ,\"sig\":\"…\" appended as its last member.",
        discussion: """
            Each input line must be one JSON object without a sig. The signature is Ed25519 over \
            the line's exact bytes (trailing whitespace removed), as the guard verifies it \
            (see docs/twin-feed.md). Output is written as input arrives, so it works in a live pipe. A line \
            that cannot be signed is reported on stderr with its number and left out.

            Exit codes: 0 every line signed; 1 some lines could not be signed; 2 the key cannot \
            be read, or usage.
            """
    )

    @Option(name: .long, help: "Private key file (from tibet-twin keygen).")
    var key: String

    func run() throws {
        let privateKey: Curve25519Key
        do {
            privateKey = try KeyFiles.readPrivateKey(path: key)
        } catch {
            twinCommandError("tibet-twin sign: \(error)")
            throw ExitCode(2)
        }
        if KeyFiles.isExposed(path: key) {
            twinCommandError("tibet-twin sign: warning: \(key) is readable by group or others; chmod 600 it")
        }
        let summary = TwinSignFilter.run(key: privateKey)
        if summary.rejected > 0 {
            twinCommandError("tibet-twin sign: \(summary.rejected) line(s) not signed, \(summary.signed) signed")
            throw ExitCode(1)
        }
    }
}

typealias Curve25519Key = TwinSignFilter.PrivateKey

/// One line to stderr (fd 2; the Glibc `stderr` global is not concurrency-safe).
private func twinCommandError(_ message: String) {
    CLIOut.write(2, message + "\n")
}
