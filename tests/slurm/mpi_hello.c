/* The Slurm tests' MPI program (tests/slurm/test_mpi.py builds it with mpicc).
 *
 * Each rank prints one line: its rank, the world's size, its PID and the inodes of its
 * PID, IPC and network namespaces (so a test can tell whether ranks share a sandbox),
 * and, with two ranks, the result of a ping-pong of small messages between them with
 * its mean round-trip time. Exit status 0 only when every message came back intact. */
#include <mpi.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define ROUNDS 1000

static unsigned long ns_inode(const char *name) {
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/self/ns/%s", name);
    return stat(path, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

int main(int argc, char **argv) {
    int rank, size, ok = 1;
    double rtt_us = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size == 2) {
        long message = 0;
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (long i = 0; i < ROUNDS; i++) {
            if (rank == 0) {
                message = i;
                MPI_Send(&message, 1, MPI_LONG, 1, 0, MPI_COMM_WORLD);
                MPI_Recv(&message, 1, MPI_LONG, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                ok &= message == i + 1;
            } else {
                MPI_Recv(&message, 1, MPI_LONG, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                ok &= message == i;
                message++;
                MPI_Send(&message, 1, MPI_LONG, 0, 0, MPI_COMM_WORLD);
            }
        }
        rtt_us = (MPI_Wtime() - start) * 1e6 / ROUNDS;
    }
    printf("rank %d of %d pid %d pidns %lu ipcns %lu netns %lu pingpong %s rtt %.1f us\n", rank, size,
           (int)getpid(), ns_inode("pid"), ns_inode("ipc"), ns_inode("net"), ok ? "ok" : "corrupt", rtt_us);
    MPI_Finalize();
    return ok ? 0 : 1;
}
