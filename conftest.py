"""Repository-root conftest: puts the repo on sys.path so `import offline, service, ...` works without install."""
