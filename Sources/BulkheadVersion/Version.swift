/// The version every Bulkhead executable reports with `--version`.
public enum BulkheadVersion {
    public static let string = "0.1.0"
}
