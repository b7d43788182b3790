#compdef lmlab

_lmlab_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _LMLAB_COMPLETE=complete_zsh lmlab)
}

compdef _lmlab_completion lmlab
