import ArgumentParser
import Foundation
import Appliance
import TibetTwin
#if canImport(Glibc)
import Glibc
#endif

/// Where the running appliance's HTTP API is: `--url`, else `http.listen` of `--config`, else
/// `127.0.0.1:9102` (the default `http.listen`).
struct ApplianceURLOptions: ParsableArguments {
    @Option(help: "The appliance's HTTP API (default: http.listen of --config, else http://127.0.0.1:9102).")
    var url: String?

    @Option(help: ArgumentHelp("The appliance config, to take http.listen from.", valueName: "FILE"))
    var config: String?

    /// `--config`, parsed; nil without `--config`. Throws a one-line message if it cannot be read.
    func parsedConfig() throws -> ApplianceConfig? {
        guard let config else { return nil }
        let text: String
        do { text = try CLIFiles.readText(config) } catch {
            throw ValidationError("\(error)")
        }
        do { return try ApplianceConfig.parse(yaml: text, file: config) } catch {
            throw ValidationError(error.issues.first.map(\.description) ?? "\(config): invalid config")
        }
    }

    /// The URL to ask; throws a one-line message if the config cannot be read.
    func resolvedURL() throws -> String {
        if let url { return url }
        guard let parsed = try parsedConfig() else { return "http://127.0.0.1:9102" }
        let listen = parsed.http.listen
        // A wildcard listen address is reached over loopback.
        let host = listen.host == "0.0.0.0" ? "127.0.0.1" : listen.host == "::" ? "::1" : listen.host
        return host.contains(":") ? "http://[\(host)]:\(listen.port)" : "http://\(host):\(listen.port)"
    }
}


struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the running appliance's permits, reasons and ages (its HTTP /status).",
        discussion: """
            Exit codes: 0 the appliance answered and is healthy; 1 it answered but is degraded \
            (audit not writable or guard not running); 2 bad usage or the appliance cannot be reached.
            """
    )

    @OptionGroup var target: ApplianceURLOptions

    @Flag(help: "Print the /status JSON (see docs/cli.md) instead of the table.")
    var json = false

    func run() throws {
        let url: String
        do { url = try target.resolvedURL() } catch {
            CLIOut.errorLine("tibet-twin status: \(error)")
            throw ExitCode(2)
        }
        let response: (status: Int, body: [UInt8])
        do {
            response = try SimpleHTTPClient.request(method: "GET", url: url, path: "/status")
        } catch {
            CLIOut.errorLine("tibet-twin status: \(error)")
            throw ExitCode(2)
        }
        let text = String(decoding: response.body, as: UTF8.self)
        guard response.status == 200 else {
            CLIOut.errorLine("tibet-twin status: \(url)/status answered \(response.status): \(text.trimmingSuffixNewlines())")
            throw ExitCode(2)
        }
        guard let value = try? JSONParser.parse(text), let snapshot = StatusSnapshot(json: value) else {
            CLIOut.errorLine("tibet-twin status: \(url)/status: not the status JSON")
            throw ExitCode(2)
        }
        if json {
            print(text.trimmingSuffixNewlines())
        } else {
            print(snapshot.text(color: CLIOut.stdoutIsTerminal), terminator: "")
        }
        if !snapshot.healthy { throw ExitCode(1) }
    }
}

struct ResetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset",
        abstract: "Clear a latched intent (or all of a device's) after a trip; the reset is audited.",
        discussion: """
            The intent then re-arms: its permit returns only after every check has held for \
            rearm_ms (see docs/decision-rule.md). When the appliance has http.reset_token_file, the \
            token is read from --token-file, else from the file named by --config, and sent as \
            Authorization: Bearer. Exit codes: 0 reset applied (it prints which intents were \
            latched); 1 refused (unknown device or intent, audit not writable, missing or wrong \
            token, too many resets); 2 bad usage or the appliance cannot be reached.
            """
    )

    @Argument(help: "The device, as named in its map.")
    var device: String

    @Argument(help: "The intent; all of the device's intents when omitted.")
    var intent: String?

    @OptionGroup var target: ApplianceURLOptions

    @Option(help: ArgumentHelp("The reset token file (default: http.reset_token_file of --config).", valueName: "FILE"))
    var tokenFile: String?

    func run() throws {
        let url: String
        var headers: [(String, String)] = []
        do {
            url = try target.resolvedURL()
            if let path = try tokenFile ?? target.parsedConfig()?.http.resetTokenFile {
                let token: [UInt8]
                do { token = try ResetTokenFile.read(path: path) } catch { throw ValidationError("\(error)") }
                headers.append(("Authorization", "Bearer " + String(decoding: token, as: UTF8.self)))
            }
        } catch {
            CLIOut.errorLine("tibet-twin reset: \(error)")
            throw ExitCode(2)
        }
        var path = "/reset?device=\(Self.percentEncode(device))"
        if let intent { path += "&intent=\(Self.percentEncode(intent))" }
        let response: (status: Int, body: [UInt8])
        do {
            response = try SimpleHTTPClient.request(method: "POST", url: url, path: path, headers: headers)
        } catch {
            CLIOut.errorLine("tibet-twin reset: \(error)")
            throw ExitCode(2)
        }
        let text = String(decoding: response.body, as: UTF8.self)
        let value = try? JSONParser.parse(text)
        guard response.status == 200, let value else {
            let message = value?["error"]?.stringValue ?? text.trimmingSuffixNewlines()
            CLIOut.errorLine("tibet-twin reset: \(message)")
            throw ExitCode([401, 403, 404, 429, 503].contains(response.status) ? 1 : 2)
        }
        let cleared = value["cleared"]?.arrayValue?.compactMap(\.stringValue) ?? []
        if cleared.isEmpty {
            print("\(device): nothing was latched\(intent.map { " (\($0))" } ?? ""); reset recorded")
        } else {
            print("\(device): reset \(cleared.joined(separator: ", ")): re-arming")
        }
    }

    static func percentEncode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.append(Character(UnicodeScalar(b)))
            default:
                let hex = String(b, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }
}

extension String {
    func trimmingSuffixNewlines() -> String {
        var s = Substring(self)
        while s.last == "\n" || s.last == "\r" { s = s.dropLast() }
        return String(s)
    }
}
