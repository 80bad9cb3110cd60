import Platform

#if canImport(Glibc)
import Glibc
#endif

/// Why the reset token file (`http.reset_token_file`, `tibet-twin reset --token-file`) cannot
/// be used.
package struct ResetTokenError: Error, Sendable, Hashable, CustomStringConvertible {
    package var path: String
    package var detail: String

    package init(path: String, detail: String) {
        self.path = path
        self.detail = detail
    }

    package var description: String { "\(path): \(detail)" }
}

/// The bearer token file for `POST /reset` (docs/operations.md#resets): one line of at least 16
/// printable ASCII characters without blanks (`openssl rand -hex 32`), in a file that only its
/// owner and group may read (0640 or stricter: the operator group reads it, `tibet-twin reset`
/// sends it).
package enum ResetTokenFile {
    package static let minimumLength = 16

    package static func read(path: String) throws(ResetTokenError) -> [UInt8] {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw ResetTokenError(path: path, detail: "cannot read the reset token file (stat: \(Errno(errno).name))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw ResetTokenError(path: path, detail: "not a regular file")
        }
        guard st.st_mode & 0o007 == 0 else {
            throw ResetTokenError(path: path, detail: String(format4: st.st_mode & 0o777)
                + " lets every local user read or change the reset token; chmod 0640 (owner root, group of the operators)")
        }
        let bytes: [UInt8]
        do { bytes = try SystemCall.readFile(path, limit: 4096) } catch {
            let why: String
            switch error {
            case .open(let e), .errno(let e): why = e.name
            case .tooLarge: why = "larger than 4096 bytes"
            }
            throw ResetTokenError(path: path, detail: "cannot read the reset token file: \(why)")
        }
        var token = bytes[...]
        while let l = token.last, l == 10 || l == 13 || l == 32 || l == 9 { token = token.dropLast() }
        while let f = token.first, f == 32 || f == 9 { token = token.dropFirst() }
        guard token.allSatisfy({ $0 > 32 && $0 < 127 }) else {
            throw ResetTokenError(path: path, detail: "the token must be one line of printable ASCII without blanks")
        }
        guard token.count >= minimumLength else {
            throw ResetTokenError(path: path, detail: "the token has \(token.count) characters; at least \(minimumLength) "
                                  + "(make one with: openssl rand -hex 32)")
        }
        return Array(token)
    }
}

extension String {
    /// `0o644` → `mode 0644`.
    init(format4 mode: mode_t) {
        var digits = String(mode, radix: 8)
        while digits.count < 4 { digits = "0" + digits }
        self = "mode \(digits)"
    }
}
