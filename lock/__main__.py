try:
    from lock.cli import main
except KeyboardInterrupt:  # Ctrl-C while the imports load: no traceback
    raise SystemExit(130) from None

raise SystemExit(main())
