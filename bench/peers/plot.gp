# Throughput and p99 against concurrency, from sweep.dat (report.py):
# one block per server, its first line the title.
set terminal pngcairo size 1200,500 font ",10" noenhanced
set output "throughput-p99.png"
stats "sweep.dat" using 1 every ::1 nooutput
blocks = STATS_blocks
set multiplot layout 1,2 title "POST token, client_credentials + client_secret_basic, server on one core (wrk, every response checked)"
set logscale xy
set xlabel "concurrent keep-alive connections"
set key outside bottom center horizontal
set grid
set ylabel "requests/s"
set title "throughput"
plot for [i=0:blocks-1] "sweep.dat" index i using 1:2 with linespoints lw 2 title columnheader(1)
set ylabel "p99 latency, ms"
set title "p99 latency"
plot for [i=0:blocks-1] "sweep.dat" index i using 1:3 with linespoints lw 2 title columnheader(1)
unset multiplot
