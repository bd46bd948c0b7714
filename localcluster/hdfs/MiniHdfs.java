// The tests' HDFS: one NameNode and one DataNode in this JVM (Hadoop's MiniDFSCluster), bound
// to 127.0.0.1 only, with WebHDFS on. Started and stopped by localcluster/hdfs.py; its jars
// come from pom.xml beside this file and tools/hdfs.sh compiles it.
//
//   java -Djava.io.tmpdir=<dir> -cp <jars>:<classes> MiniHdfs <base dir> <ready file>
//
// (Jetty unpacks the web apps under java.io.tmpdir and leaves them there: give it a directory
// that is deleted with the cluster's.)
//
// Once the cluster is up and out of safe mode it writes the ready file (atomically, by a
// rename) as one JSON line: {"rpc_port": N, "http_port": N, "datanode_http_port": N}, then
// runs until killed; a SIGTERM shuts the cluster down.
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public final class MiniHdfs {
  private MiniHdfs() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: MiniHdfs <base dir> <ready file>");
      System.exit(2);
    }
    File base = new File(args[0]);
    Path ready = Path.of(args[1]);

    Configuration conf = new Configuration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());
    conf.set("hadoop.tmp.dir", new File(base, "tmp").getAbsolutePath());
    conf.setInt("dfs.replication", 1);
    // Small blocks (the NameNode's minimum is 1 MiB by default): a test's files span several.
    conf.setLong("dfs.blocksize", 8L * 1024 * 1024);
    // Any user may write anywhere: the tests and the sidecar run as root or as anyone.
    conf.setBoolean("dfs.permissions.enabled", false);
    conf.setBoolean("dfs.webhdfs.enabled", true);
    // Loopback only, every port picked by the kernel. MiniDFSCluster binds the DataNode to
    // 127.0.0.1 itself; WebHDFS redirects a client to the DataNode's IP, so to 127.0.0.1.
    conf.set("dfs.namenode.rpc-address", "127.0.0.1:0");
    conf.set("dfs.namenode.http-address", "127.0.0.1:0");
    conf.setBoolean("dfs.datanode.use.datanode.hostname", false);
    conf.setBoolean("dfs.client.use.datanode.hostname", false);
    // A quicker start and nothing in the background that a test does not need.
    conf.setInt("dfs.namenode.safemode.extension", 0);
    conf.setInt("dfs.heartbeat.interval", 1);
    conf.setInt("dfs.datanode.scan.period.hours", -1);
    conf.setInt("dfs.datanode.directoryscan.interval", -1);
    conf.setBoolean("dfs.namenode.audit.log.async", false);
    conf.setInt("dfs.namenode.handler.count", 4);
    conf.setInt("dfs.datanode.handler.count", 4);

    MiniDFSCluster cluster =
        new MiniDFSCluster.Builder(conf, base)
            .numDataNodes(1)
            .nameNodePort(0)
            .nameNodeHttpPort(0)
            .format(true)
            .manageNameDfsDirs(true)
            .build();
    Runtime.getRuntime().addShutdownHook(new Thread(cluster::shutdown, "minihdfs-shutdown"));
    cluster.waitActive();
    cluster.waitClusterUp();

    String json =
        String.format(
            "{\"rpc_port\": %d, \"http_port\": %d, \"datanode_http_port\": %d}%n",
            cluster.getNameNodePort(),
            cluster.getNameNode().getHttpAddress().getPort(),
            cluster.getDataNodes().get(0).getInfoPort());
    Path tmp = ready.resolveSibling(ready.getFileName() + ".tmp");
    Files.write(tmp, json.getBytes(StandardCharsets.UTF_8));
    Files.move(tmp, ready, StandardCopyOption.ATOMIC_MOVE);
    System.out.println("MiniHdfs ready: " + json.trim());
    System.out.flush();

    Thread.currentThread().join();
  }
}
