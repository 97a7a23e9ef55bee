// pgjdbc client checks, driven by tests/integration/test_jdbc.py.
// Usage: java -cp .:postgresql.jar JdbcCheck JDBC_URL USER PASSWORD
// Prints one line per observation; the Python side runs this against PostgreSQL directly
// and through pgcordon and compares the output.

import java.io.StringReader;
import java.math.BigDecimal;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.Arrays;
import java.util.Properties;
import java.util.UUID;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class JdbcCheck {
    static void p(String s) {
        System.out.println(s);
    }

    static String one(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("sslmode", "disable");
        props.setProperty("connectTimeout", "10");
        props.setProperty("socketTimeout", "60");

        try (Connection c = DriverManager.getConnection(url, props)) {
            // Startup parameters pgjdbc sends (TimeZone from the JVM, DateStyle, ...).
            for (String g : new String[] {"TimeZone", "DateStyle", "extra_float_digits",
                    "client_encoding", "application_name"}) {
                p("show " + g + " = " + one(c, "SHOW " + g));
            }

            // A prepared statement executed more often than prepareThreshold (5): pgjdbc
            // switches from unnamed to a named server-side statement.
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id * ?, name, price FROM items WHERE id = ?")) {
                for (int i = 1; i <= 9; i++) {
                    ps.setInt(1, 10);
                    ps.setInt(2, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        p("prep " + i + " " + rs.getInt(1) + " " + rs.getString(2) + " "
                          + rs.getBigDecimal(3) + " server="
                          + ps.unwrap(PGStatement.class).isUseServerPrepare());
                    }
                }
            }
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery(
                     "SELECT name, statement FROM pg_prepared_statements ORDER BY name")) {
                while (rs.next()) {
                    p("stmt " + rs.getString(1) + " " + rs.getString(2));
                }
            }

            // Batches: one Sync for many Bind/Execute pairs.
            try (Statement st = c.createStatement()) {
                st.execute("CREATE TEMP TABLE jb (id int PRIMARY KEY, t text, n numeric)");
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jb VALUES (?, ?, ?)")) {
                for (int i = 0; i < 300; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "row " + i);
                    ps.setBigDecimal(3, new BigDecimal(i).divide(new BigDecimal(8)));
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                p("batch " + counts.length + " sum=" + Arrays.stream(counts).sum());
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO jb VALUES (?, ?, ?)")) {
                int[] ids = {1000, 5, 1001};
                for (int id : ids) {
                    ps.setInt(1, id);
                    ps.setString(2, "dup?");
                    ps.setBigDecimal(3, BigDecimal.ONE);
                    ps.addBatch();
                }
                ps.executeBatch();
                p("batch with duplicate: no error");
            } catch (BatchUpdateException e) {
                p("batch error " + e.getSQLState() + " counts="
                  + Arrays.toString(e.getUpdateCounts()));
            }
            try (Statement st = c.createStatement()) {
                st.addBatch("INSERT INTO jb VALUES (500, 'a', 1)");
                st.addBatch("UPDATE jb SET t = 'b' WHERE id < 10");
                st.addBatch("DELETE FROM jb WHERE id = 299");
                p("statement batch " + Arrays.toString(st.executeBatch()));
            }
            p("jb " + one(c, "SELECT count(*) || ' ' || sum(n) FROM jb"));

            // Transactions and savepoints.
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.executeUpdate("INSERT INTO jb VALUES (600, 'tx', 2)");
                Savepoint sp = c.setSavepoint("sp1");
                st.executeUpdate("INSERT INTO jb VALUES (601, 'tx', 2)");
                c.rollback(sp);
                c.commit();
                st.executeUpdate("INSERT INTO jb VALUES (602, 'tx', 2)");
                c.rollback();
            }
            c.setAutoCommit(true);
            p("tx " + one(c, "SELECT string_agg(id::text, ',' ORDER BY id) FROM jb WHERE id >= 600"));

            // Errors and recovery.
            try (Statement st = c.createStatement()) {
                st.executeQuery("SELECT 1/0");
            } catch (SQLException e) {
                p("error " + e.getSQLState() + " " + e.getMessage());
            }
            p("after error " + one(c, "SELECT 'ok'"));

            // Fetch size in a transaction: Execute with a row limit, PortalSuspended.
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("SELECT id FROM items WHERE id > ? ORDER BY id")) {
                ps.setFetchSize(7);
                ps.setInt(1, 3);
                long sum = 0;
                int n = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        sum += rs.getInt(1);
                        n++;
                    }
                }
                p("fetch " + n + " " + sum);
            }
            c.commit();
            c.setAutoCommit(true);

            // COPY through pgjdbc's CopyManager.
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < 2000; i++) {
                sb.append(10000 + i).append("\tcopied ").append(i).append("\t").append(i).append("\n");
            }
            p("copy in " + cm.copyIn("COPY jb FROM STDIN", new StringReader(sb.toString())));
            java.io.StringWriter w = new java.io.StringWriter();
            p("copy out " + cm.copyOut("COPY (SELECT * FROM jb WHERE id >= 10000 ORDER BY id) TO STDOUT", w));
            p("copy out same " + w.toString().equals(sb.toString()));

            // Metadata queries (catalog-heavy, many round trips).
            DatabaseMetaData md = c.getMetaData();
            p("db " + md.getDatabaseProductName() + " " + md.getDatabaseMajorVersion());
            try (ResultSet rs = md.getColumns(null, "public", "items", null)) {
                while (rs.next()) {
                    p("col " + rs.getString("COLUMN_NAME") + " " + rs.getString("TYPE_NAME"));
                }
            }
        }

        // Binary transfer: server-prepare from the first execution, binary results.
        Properties bp = (Properties) props.clone();
        bp.setProperty("prepareThreshold", "-1");
        bp.setProperty("binaryTransfer", "true");
        try (Connection c = DriverManager.getConnection(url, bp)) {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT ?::int4, ?::int8, ?::float8, ?::numeric, ?::text, ?::bytea, "
                    + "?::timestamptz, ?::date, ?::uuid, ?::int4[], ?::bool, ?::float4")) {
                for (int i = 0; i < 3; i++) {
                    ps.setInt(1, 42 + i);
                    ps.setLong(2, 9000000000L + i);
                    ps.setDouble(3, 3.25 + i);
                    ps.setBigDecimal(4, new BigDecimal("12345.678").add(new BigDecimal(i)));
                    ps.setString(5, "binary ✓ " + i);
                    ps.setBytes(6, new byte[] {0, 1, (byte) 0xff, (byte) i});
                    ps.setObject(7, OffsetDateTime.of(2024, 3, 4, 5, 6, 7, 0, ZoneOffset.UTC));
                    ps.setObject(8, LocalDate.of(2024, 2, 29));
                    ps.setObject(9, UUID.fromString("123e4567-e89b-12d3-a456-42661417400" + i));
                    ps.setArray(10, c.createArrayOf("int4", new Integer[] {1, 2, i}));
                    ps.setBoolean(11, i % 2 == 0);
                    ps.setFloat(12, 1.5f);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        ResultSetMetaData m = rs.getMetaData();
                        StringBuilder line = new StringBuilder("binary " + i);
                        for (int col = 1; col <= m.getColumnCount(); col++) {
                            Object o;
                            if (col == 6) {
                                o = Arrays.toString(rs.getBytes(col));
                            } else if (col == 7) {
                                o = rs.getObject(col, OffsetDateTime.class);
                            } else if (col == 10) {
                                o = Arrays.toString((Integer[]) rs.getArray(col).getArray());
                            } else {
                                o = rs.getObject(col);
                            }
                            line.append(" | ").append(m.getColumnTypeName(col)).append("=").append(o);
                        }
                        p(line.toString());
                    }
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, name, price, created FROM items WHERE id <= ? ORDER BY id")) {
                ps.setInt(1, 3);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        p("binrow " + rs.getInt(1) + " " + rs.getString(2) + " " + rs.getBigDecimal(3)
                          + " " + rs.getObject(4, OffsetDateTime.class));
                    }
                }
            }
        }
        p("done");
    }
}
