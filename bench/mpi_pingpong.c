/* bench/mpi.py's MPI program: a ping-pong between ranks 0 and 1.
 *
 * Prints one line from rank 0: the mean one-way latency of an 8-byte message (half the
 * round trip, over ROUNDS after WARMUP) and the bandwidth of 1 MiB messages, each
 * direction counted. Exit status 0 only when every message came back intact. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WARMUP 1000
#define ROUNDS 20000
#define BIG (1 << 20)
#define BIG_ROUNDS 200

static double pingpong(int rank, char *buf, int size, int rounds, int *ok) {
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int i = 0; i < rounds; i++) {
        if (rank == 0) {
            buf[0] = (char)i;
            MPI_Send(buf, size, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, size, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            *ok &= buf[0] == (char)(i + 1);
        } else {
            MPI_Recv(buf, size, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            buf[0]++;
            MPI_Send(buf, size, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    return MPI_Wtime() - start;
}

int main(int argc, char **argv) {
    int rank, size, ok = 1;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) {
        if (rank == 0) fprintf(stderr, "mpi_pingpong: run 2 ranks\n");
        MPI_Finalize();
        return 2;
    }
    char *buf = calloc(1, BIG);
    pingpong(rank, buf, 8, WARMUP, &ok);
    double small = pingpong(rank, buf, 8, ROUNDS, &ok);
    pingpong(rank, buf, BIG, 10, &ok);
    double big = pingpong(rank, buf, BIG, BIG_ROUNDS, &ok);
    if (rank == 0)
        printf("latency_us %.2f bandwidth_MBps %.0f %s\n", small * 1e6 / ROUNDS / 2,
               2.0 * BIG_ROUNDS * BIG / big / 1e6, ok ? "ok" : "corrupt");
    free(buf);
    MPI_Finalize();
    return ok ? 0 : 1;
}
