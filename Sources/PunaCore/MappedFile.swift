import CPuna

/// A whole file mapped read-only. Weight tensors are views into this mapping: the bytes stay
/// file-backed (clean pages the kernel may drop and re-read), nothing is copied.
public final class MappedFile {
    public let path: String
    private var mapping: puna_mapping

    public init(path: String) throws(PunaError) {
        self.path = path
        mapping = puna_map_file(path)
        if mapping.error != 0 {
            if mapping.is_directory != 0 { throw PunaError("\(path): is a directory, not a file") }
            throw PunaError("\(path): cannot open: \(String(cString: puna_strerror(mapping.error)))")
        }
    }

    deinit { puna_unmap(&mapping) }

    /// File size in bytes.
    public var count: Int { Int(mapping.size) }

    /// Start of the mapping; nil for an empty file.
    public var baseAddress: UnsafeRawPointer? { mapping.data.map { UnsafeRawPointer($0) } }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: baseAddress, count: count) }

    public enum Advice { case normal, sequential, random, willNeed, dontNeed }

    /// madvise a byte range of the mapping (a hint: failures are ignored).
    public func advise(offset: Int, count: Int, _ advice: Advice) {
        let code: Int32
        switch advice {
        case .normal: code = 0
        case .sequential: code = 1
        case .random: code = 2
        case .willNeed: code = 3
        case .dontNeed: code = 4
        }
        _ = withUnsafePointer(to: &mapping) { puna_advise($0, Int64(offset), Int64(count), code) }
    }

    /// mlock the whole mapping.
    public func lock() throws(PunaError) {
        let err = withUnsafePointer(to: &mapping) { puna_lock($0) }
        if err != 0 { throw PunaError("\(path): mlock failed: \(String(cString: puna_strerror(err)))") }
    }
}
