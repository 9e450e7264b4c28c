# Optional: milter-manager-log-analyzer every five minutes, off by default.
#
# It reads the statistics lines of milter-manager's log and keeps per-minute counters
# (SQLite) and graphs of the last day, week, month and year in OUTPUT_DIRECTORY, with an
# index.html to view them. The graphs need the package python3-matplotlib.
# To turn it on, remove the '#' in front of the line below; the output directory
# belongs to the milter-manager user. See milter-manager-log-analyzer(1).
#
#*/5 * * * *	milter-manager	test -x /usr/bin/milter-manager-log-analyzer && nice /usr/bin/milter-manager-log-analyzer --output-directory /var/lib/milter-manager/log-analyzer /var/log/milter-manager/milter-manager.log
