import Yams

// Strict reading of YAML documents through Yams' node API, shared by the register map and the
// appliance config parsers. Every problem becomes a `MapIssue` with `file:line:col` and the key
// path; the readers go on after a problem so one pass reports every issue of a file.

/// Collects the issues of one file while it is read. Confined to one parse call.
final class YAMLContext {
    let file: String
    private(set) var issues: [MapIssue] = []
    /// Valid but suspicious things (`DeviceMap.warnings`).
    private(set) var warnings: [MapIssue] = []

    init(file: String) {
        self.file = file
    }

    /// The location of a node, or 1:1 when Yams gave none.
    func location(_ node: Node?) -> SourceLocation {
        let mark = node?.mark
        return SourceLocation(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1)
    }

    func error(_ node: Node?, _ path: String, _ message: String) {
        issues.append(MapIssue(location: location(node), keyPath: path, message: message))
    }

    func error(at location: SourceLocation, _ path: String, _ message: String) {
        issues.append(MapIssue(location: location, keyPath: path, message: message))
    }

    func warning(_ node: Node?, _ path: String, _ message: String) {
        warnings.append(MapIssue(location: location(node), keyPath: path, message: message))
    }

    /// Warnings in file order.
    var sortedWarnings: [MapIssue] {
        warnings.sorted { ($0.location.line, $0.location.column) < ($1.location.line, $1.location.column) }
    }

    /// Issues in file order (line, then column), stable for issues at the same place.
    var sortedIssues: [MapIssue] {
        issues.enumerated().sorted { a, b in
            let (la, lb) = (a.element.location, b.element.location)
            if la.line != lb.line { return la.line < lb.line }
            if la.column != lb.column { return la.column < lb.column }
            return a.offset < b.offset
        }.map(\.element)
    }

    /// Parses the text into one document's root node; a syntax error becomes an issue.
    /// Returns nil (with an issue) for syntax errors and for an empty document.
    func compose(_ yaml: String, emptyMessage: String) -> Node? {
        // Anchors, aliases, too many values or too deep a nesting are refused before Yams sees
        // the text: composing an alias bomb costs exponential time (YAMLPreScan.swift).
        if let refused = YAMLPreScan.check(yaml) {
            error(at: SourceLocation(file: file, line: refused.line, column: refused.column), "", refused.message)
            return nil
        }
        do {
            // The basic resolver: scalars are interpreted here, never by Yams' implicit-tag
            // regexes, which cost more than the rest of the parse (see `make bench`, maps).
            guard let root = try Yams.compose(yaml: yaml, .basic) else {
                error(at: SourceLocation(file: file, line: 1, column: 1), "", emptyMessage)
                return nil
            }
            if isNull(root) {
                error(root, "", emptyMessage)
                return nil
            }
            return root
        } catch let e as YamlError {
            report(e, yaml: yaml)
            return nil
        } catch {
            self.error(at: SourceLocation(file: file, line: 1, column: 1), "", "YAML error: \(error)")
            return nil
        }
    }

    private func report(_ e: YamlError, yaml: String) {
        func at(_ mark: Mark) -> SourceLocation { SourceLocation(file: file, line: mark.line, column: mark.column) }
        func withContext(_ problem: String, _ context: YamlError.Context?) -> String {
            guard let context else { return problem }
            return "\(problem) (\(context.text) at \(context.mark.line):\(context.mark.column))"
        }
        switch e {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            error(at: at(mark), "", "YAML syntax error: \(withContext(problem, context))")
        case .reader(let problem, let offset, _, _):
            var line = 1, column = 1
            if let offset {
                for ch in yaml.prefix(offset) {
                    if ch == "\n" { line += 1; column = 1 } else { column += 1 }
                }
            }
            error(at: SourceLocation(file: file, line: line, column: column), "",
                  "YAML syntax error: \(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "\"\($0)\"" }.joined(separator: ", ")
            error(at: at(context.mark), "",
                  "duplicate key \(keys) in one mapping (each key may appear once)")
        default:
            error(at: SourceLocation(file: file, line: 1, column: 1), "", "YAML error: \(e)")
        }
    }
}

// MARK: - Key paths

/// `parent.child`, or `child` at the root.
func keyPath(_ parent: String, _ key: String) -> String {
    parent.isEmpty ? key : "\(parent).\(key)"
}

/// `parent[index]`.
func keyPath(_ parent: String, index: Int) -> String {
    "\(parent)[\(index)]"
}

// MARK: - Node kinds

/// A plain `~`, `null` or empty scalar: YAML's null.
func isNull(_ node: Node) -> Bool {
    guard case .scalar(let s) = node, !isQuoted(s) else { return false }
    return s.string.isEmpty || s.string == "~" || s.string == "null" || s.string == "Null" || s.string == "NULL"
}

/// Whether a scalar was written as a string (quoted or a block scalar), not a plain word.
///
/// Decided by the written style alone. Yams' tags cannot tell: resolving a tag (which hashing a
/// mapping key does) overwrites it in place, so a plain key reads back as `!!str` afterwards.
/// Explicit tags (`!!str 100`) are therefore not interpreted; nobody writes them in a map.
func isQuoted(_ scalar: Node.Scalar) -> Bool {
    scalar.style != .plain && scalar.style != .any
}

/// How a node looks, for "expected X, got Y" messages.
func describe(_ node: Node) -> String {
    switch node {
    case .scalar(let s):
        if isNull(node) { return "null" }
        return "\"\(s.string.count > 40 ? String(s.string.prefix(40)) + "…" : s.string)\""
    case .mapping: return "a mapping"
    case .sequence: return "a list"
    case .alias: return "an alias"
    }
}

// MARK: - Mappings with a fixed key set

/// A YAML mapping whose keys are all known in advance. Unknown keys are reported when the reader
/// is made (a typo must never be silently ignored); values are fetched by `take`/`require`.
final class MappingReader {
    let ctx: YAMLContext
    let node: Node
    let path: String
    let known: [String]
    private(set) var entries: [(key: String, keyNode: Node, value: Node)] = []

    /// Returns nil (with an issue) when `node` is not a mapping.
    init?(_ ctx: YAMLContext, _ node: Node, _ path: String, keys known: [String], what: String) {
        guard case .mapping(let mapping) = node else {
            ctx.error(node, path, "expected \(what), got \(describe(node))")
            return nil
        }
        self.ctx = ctx
        self.node = node
        self.path = path
        self.known = known
        for (k, v) in mapping {
            guard case .scalar(let ks) = k else {
                ctx.error(k, path, "a key must be a plain word, got \(describe(k))")
                continue
            }
            if ks.string == "<<" {
                ctx.error(k, keyPath(path, "<<"), "merge keys (<<) are not supported: write the keys out")
                continue
            }
            if !known.contains(ks.string) {
                ctx.error(k, keyPath(path, ks.string), unknownKeyMessage(ks.string, known: known))
                continue
            }
            if let first = entries.first(where: { $0.key == ks.string }) {
                ctx.error(k, keyPath(path, ks.string), "duplicate key \"\(ks.string)\" (first at \(ctx.location(first.keyNode)))")
                continue
            }
            entries.append((ks.string, k, v))
        }
    }

    /// Every entry of a free-form mapping (names chosen by the user, e.g. intents), in file order.
    /// Returns nil (with an issue) when `node` is not a mapping.
    static func freeEntries(_ ctx: YAMLContext, _ node: Node, _ path: String, what: String)
        -> [(key: String, keyNode: Node, value: Node)]?
    {
        guard case .mapping(let mapping) = node else {
            ctx.error(node, path, "expected \(what), got \(describe(node))")
            return nil
        }
        var out: [(key: String, keyNode: Node, value: Node)] = []
        var firstIndex: [String: Int] = [:]   // not a scan of `out`: free mappings may be long
        for (k, v) in mapping {
            guard case .scalar(let ks) = k, !isNull(k) else {
                ctx.error(k, path, "a key must be a plain word, got \(describe(k))")
                continue
            }
            if ks.string == "<<" {
                ctx.error(k, keyPath(path, "<<"), "merge keys (<<) are not supported: write the keys out")
                continue
            }
            // Yams reports repeated keys while composing (with the basic resolver "a" and a are
            // equal too); this guards the rule should the resolver ever change.
            if let first = firstIndex[ks.string] {
                ctx.error(k, keyPath(path, ks.string), "duplicate key \"\(ks.string)\" (first at \(ctx.location(out[first].keyNode)))")
                continue
            }
            firstIndex[ks.string] = out.count
            out.append((ks.string, k, v))
        }
        return out
    }

    func has(_ key: String) -> Bool { entries.contains { $0.key == key } }

    /// The value of `key`, or nil if absent.
    func take(_ key: String) -> Node? {
        precondition(known.contains(key), "key \(key) not declared for \(path)")
        return entries.first { $0.key == key }?.value
    }

    /// The key node of `key` (where the key itself is written), or nil if absent.
    func keyNode(_ key: String) -> Node? {
        entries.first { $0.key == key }?.keyNode
    }

    /// The value of `key`; reports a missing key (at the mapping) when it is absent.
    func require(_ key: String, _ why: String) -> Node? {
        if let v = take(key) { return v }
        ctx.error(node, keyPath(path, key), "missing required key \"\(key)\" (\(why))")
        return nil
    }
}

func unknownKeyMessage(_ key: String, known: [String]) -> String {
    if let s = closest(key, in: known) {
        return "unknown key \"\(key)\" (did you mean \"\(s)\"?)"
    }
    return "unknown key \"\(key)\" (expected one of: \(known.joined(separator: ", ")))"
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
func closest(_ word: String, in candidates: [String]) -> String? {
    let w = Array(word.lowercased())
    var best: (String, Int)?
    for c in candidates {
        let d = editDistance(w, Array(c.lowercased()))
        if best == nil || d < best!.1 { best = (c, d) }
    }
    guard let (c, d) = best else { return nil }
    let limit = max(1, min(3, max(w.count, c.count) / 3))
    if d <= limit { return c }
    let lw = word.lowercased(), lc = c.lowercased()
    if lw.count >= 3, lc.hasPrefix(lw) || lw.hasPrefix(lc) { return c }
    return nil
}

/// Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps.
func editDistance(_ a: [Character], _ b: [Character]) -> Int {
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev2 = [Int](repeating: 0, count: b.count + 1)
    var prev = Array(0...b.count)
    var cur = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        cur[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                cur[j] = min(cur[j], prev2[j - 2] + 1)
            }
        }
        (prev2, prev, cur) = (prev, cur, prev2)
    }
    return prev[b.count]
}

// MARK: - Scalars

/// A parsed YAML integer: sign and magnitude, so the full `Int64` and `UInt64` ranges fit.
struct YAMLInteger {
    var negative: Bool
    var magnitude: UInt64

    var int64: Int64? {
        if negative {
            return magnitude <= UInt64(Int64.max) + 1 ? Int64(truncatingIfNeeded: 0 &- magnitude) : nil
        }
        return magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
    }

    var uint64: UInt64? { negative && magnitude != 0 ? nil : magnitude }

    var double: Double { negative ? -Double(magnitude) : Double(magnitude) }

    /// Decimal, `0x` hex, `0o` octal or `0b` binary, optional sign, `_` between digits.
    /// A decimal with a leading zero (`017`) is refused: YAML 1.1 would read it as octal.
    init?(_ text: String) {
        var s = Substring(text)
        negative = false
        if s.first == "-" { negative = true; s = s.dropFirst() } else if s.first == "+" { s = s.dropFirst() }
        var radix: UInt64 = 10
        if s.hasPrefix("0x") || s.hasPrefix("0X") { radix = 16; s = s.dropFirst(2) }
        else if s.hasPrefix("0o") || s.hasPrefix("0O") { radix = 8; s = s.dropFirst(2) }
        else if s.hasPrefix("0b") || s.hasPrefix("0B") { radix = 2; s = s.dropFirst(2) }
        guard !s.isEmpty, s.first != "_", s.last != "_" else { return nil }
        if radix == 10, s.count > 1, s.first == "0" { return nil }
        var m: UInt64 = 0
        for ch in s {
            if ch == "_" { continue }
            guard let d = ch.hexDigitValue, UInt64(d) < radix else { return nil }
            let (p, o1) = m.multipliedReportingOverflow(by: radix)
            let (q, o2) = p.addingReportingOverflow(UInt64(d))
            if o1 || o2 { return nil }
            m = q
        }
        magnitude = m
    }
}

extension YAMLContext {
    /// The text of a scalar; anything else (or null) is reported.
    func scalarText(_ node: Node, _ path: String, expected: String) -> String? {
        guard case .scalar(let s) = node, !isNull(node) else {
            error(node, path, "expected \(expected), got \(describe(node))")
            return nil
        }
        return s.string
    }

    /// A non-empty string (plain or quoted).
    func string(_ node: Node, _ path: String, expected: String = "a string") -> String? {
        guard let s = scalarText(node, path, expected: expected) else { return nil }
        if s.trimmingSpaces.isEmpty {
            error(node, path, "must not be empty (expected \(expected))")
            return nil
        }
        return s
    }

    /// A name used as an identifier (device, register, intent, status): letters, digits, `_`, `-`, `.`.
    func name(_ node: Node, _ path: String, what: String) -> String? {
        guard let s = scalarText(node, path, expected: what) else { return nil }
        guard isValidName(s) else {
            error(node, path, "invalid \(what) \"\(s)\" (expected 1…64 characters: letters, digits, _ - . starting with a letter or digit)")
            return nil
        }
        return s
    }

    /// A plain integer within `range`.
    func int(_ node: Node, _ path: String, _ range: ClosedRange<Int>, expected: String? = nil) -> Int? {
        let exp = expected ?? "an integer \(range.lowerBound)…\(range.upperBound)"
        guard case .scalar(let s) = node, !isNull(node) else {
            error(node, path, "expected \(exp), got \(describe(node))")
            return nil
        }
        guard !isQuoted(s), let i = YAMLInteger(s.string), let v = i.int64 else {
            error(node, path, "expected \(exp), got \(describe(node))")
            return nil
        }
        guard v >= Int64(range.lowerBound), v <= Int64(range.upperBound) else {
            error(node, path, "\(v) is out of range (expected \(exp))")
            return nil
        }
        return Int(v)
    }

    /// A plain number (integer or decimal), finite.
    func number(_ node: Node, _ path: String, expected: String = "a number") -> Double? {
        guard case .scalar(let s) = node, !isNull(node), !isQuoted(s), let d = parseNumber(s.string) else {
            error(node, path, "expected \(expected), got \(describe(node))")
            return nil
        }
        return d
    }

    /// A plain number `>= min` (or `> min` when `exclusive`) and `<= max`.
    func number(_ node: Node, _ path: String, min: Double, exclusive: Bool = false, max: Double,
                expected: String) -> Double? {
        guard let d = number(node, path, expected: expected) else { return nil }
        if d < min || (exclusive && d == min) || d > max {
            error(node, path, "\(formatNumber(d)) is out of range (expected \(expected))")
            return nil
        }
        return d
    }

    /// `true` or `false`.
    func bool(_ node: Node, _ path: String) -> Bool? {
        if case .scalar(let s) = node, !isQuoted(s) {
            switch s.string {
            case "true", "True", "TRUE": return true
            case "false", "False", "FALSE": return false
            default: break
            }
        }
        error(node, path, "expected true or false, got \(describe(node))")
        return nil
    }

    /// One of an enum's raw values; unknown words list what is accepted.
    func choice<E: RawRepresentable & CaseIterable>(_ type: E.Type, _ node: Node, _ path: String,
                                                    what: String) -> E? where E.RawValue == String {
        guard let s = scalarText(node, path, expected: "a \(what)") else { return nil }
        if let v = E(rawValue: s) { return v }
        let all = E.allCases.map(\.rawValue)
        var msg = "unknown \(what) \"\(s)\" (expected one of: \(all.joined(separator: ", ")))"
        if let near = all.first(where: { $0.lowercased() == s.lowercased() }) {
            msg = "unknown \(what) \"\(s)\" (did you mean \"\(near)\"? expected one of: \(all.joined(separator: ", ")))"
        }
        error(node, path, msg)
        return nil
    }

    /// The items of a list; anything else is reported.
    func list(_ node: Node, _ path: String, of what: String) -> [Node]? {
        guard case .sequence(let seq) = node else {
            error(node, path, "expected a list of \(what), got \(describe(node))")
            return nil
        }
        return Array(seq)
    }
}

/// Plain YAML number: integer forms of `YAMLInteger` or a decimal with optional exponent.
/// NaN and infinities are refused: no limit, scale or bound is meaningful as one.
func parseNumber(_ text: String) -> Double? {
    if let i = YAMLInteger(text) { return i.double }
    let allowed = Set("0123456789+-.eE_")
    guard !text.isEmpty, text.allSatisfy({ allowed.contains($0) }), text.contains(where: \.isNumber) else { return nil }
    guard let d = Double(String(text.filter { $0 != "_" })), d.isFinite else { return nil }
    return d
}

/// A number as the user would write it: `200`, `0.1`, `-12.5`.
func formatNumber(_ d: Double) -> String {
    if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
    return String(d)
}

/// Names: 1…64 of letters, digits, `_`, `-`, `.`, starting with a letter or digit.
func isValidName(_ s: String) -> Bool {
    guard let first = s.unicodeScalars.first, s.unicodeScalars.count <= 64 else { return false }
    func ok(_ c: Unicode.Scalar) -> Bool {
        c.isASCII && (("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c))
    }
    guard ok(first) else { return false }
    return s.unicodeScalars.allSatisfy { ok($0) || $0 == "_" || $0 == "-" || $0 == "." }
}

extension String {
    var trimmingSpaces: Substring {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return s
    }
}
